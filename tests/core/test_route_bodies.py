"""JSON bodies of declared routes: a body that pydantic validates straight from bytes gets exactly
the answer the guarded path (``parse_json_bytes`` then ``model_validate``) gives, for every kind
of input where the two could differ; and handler results are encoded as they always were."""

from __future__ import annotations

import asyncio
import decimal
import json
import uuid
from typing import Any

import librefang
import pytest
from librefang.app import build_app
from librefang.jsonbody import MAX_JSON_DEPTH, shallow_json_text
from librefang.routing import BodyReader, Router
from librefang.testing import make_client
from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=20)
    session_id: str | None = None
    count: int = 0


class Loose(BaseModel):
    data: Any = None


class StrictId(BaseModel):
    id: uuid.UUID = Field(strict=True)


class Money(BaseModel):
    amount: decimal.Decimal


class Deferred(BaseModel):
    model_config = ConfigDict(defer_build=True)

    name: str


class BodiesPlugin:
    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("bodies")

        @router.post("/api/bodies/message/<item_id>", body=Message, status=201)
        async def message(item_id: str, body: Message) -> dict[str, Any]:
            return {"item": item_id, "message": body.message, "session_id": body.session_id, "count": body.count}

        @router.post("/api/bodies/loose", body=Loose)
        async def loose(body: Loose) -> dict[str, Any]:
            return {"data": body.data}

        @router.post("/api/bodies/strict", body=StrictId)
        async def strict(body: StrictId) -> dict[str, Any]:
            return {"id": str(body.id)}

        @router.post("/api/bodies/money", body=Money)
        async def money(body: Money) -> dict[str, Any]:
            return {"amount": str(body.amount)}

        @router.post("/api/bodies/deferred", body=Deferred, response=Deferred)
        def deferred(body: Deferred) -> Deferred:  # a plain def: its result is used as is
            return body

        @router.get("/api/bodies/list")
        async def listing() -> list[Any]:
            return [{"é": 1.5}, None]

        register(router)


@pytest.fixture
async def client(make_kernel):
    kernel = await make_kernel(plugins={"bodies": BodiesPlugin()}, load_entry_points=False)
    return make_client(build_app(kernel))


async def post(client, path: str, raw: bytes, content_type: str = "application/json"):
    return await client.post(path, data=raw, headers={"Content-Type": content_type})


async def error_of(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data(as_text=True)
    body = await response.get_json()
    assert set(body) == {"error", "code", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_valid_body_is_validated_and_the_dict_answer_keeps_status_and_encoding(client):
    response = await post(client, "/api/bodies/message/a1", b'{"message": "hi", "count": "3"}')
    assert response.status_code == 201
    assert response.mimetype == "application/json"
    # Quart's JSON encoding of a returned dict: compact, ASCII-escaped, one trailing newline.
    expected = {"item": "a1", "message": "hi", "session_id": None, "count": 3}
    assert await response.get_data() == (json.dumps(expected, separators=(",", ":")) + "\n").encode()


async def test_a_returned_list_is_json_with_status_200(client):
    response = await client.get("/api/bodies/list")
    assert response.status_code == 200
    assert await response.get_data() == b'[{"\\u00e9":1.5},null]\n'


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b'{"count": 1}', "invalid_body", "body.message: Field required"),
        (b'{"message": "x", "extra": 1}', "invalid_body", "body.extra: Extra inputs are not permitted"),
        (b'{"message": "' + b"x" * 21 + b'"}', "invalid_body", "body.message: String should have at most 20"),
        (b'{"message": "x", "count": 1.5}', "invalid_body", "body.count: Input should be a valid integer"),
        (b'[1, 2]', "invalid_body", "body: Input should be a valid dictionary"),
        (b'{"message": ', "invalid_json", "malformed JSON: Expecting value at line 1 column 13"),
        (b'{"message": "x"} trailing', "invalid_json", "malformed JSON: Extra data"),
        (b'\xef\xbb\xbf{"message": "x"}', "invalid_json", "malformed JSON: Unexpected UTF-8 BOM"),
        (b'{"message": "\xff"}', "invalid_json", "not valid UTF-8 (byte 13)"),
        (b"   ", "invalid_json", "request body is empty"),
        (b'{"message": "x", "count": NaN}', "invalid_json", "NaN is not a valid JSON value"),
        (b'{"message": "x", "count": -Infinity}', "invalid_json", "-Infinity is not a valid JSON value"),
    ],
)
async def test_bad_bodies_get_the_guarded_answers(client, raw, code, fragment):
    body = await error_of(await post(client, "/api/bodies/message/a1", raw), 400)
    assert body["code"] == code
    assert fragment in body["error"]


async def test_wrong_content_type_is_415_before_any_parsing(client):
    body = await error_of(await post(client, "/api/bodies/message/a1", b'{"message": "x"}', "text/plain"), 415)
    assert body["code"] == "unsupported_media_type"


async def test_json_values_pydantic_parses_differently_keep_json_loads_meaning(client):
    # A lone surrogate escape: json.loads accepts it, pydantic's parser refuses: still accepted.
    response = await post(client, "/api/bodies/loose", b'{"data": "\\ud800x"}')
    assert response.status_code == 200
    assert (await response.get_json())["data"] == "\ud800x"
    # Duplicate keys: the last one wins, as with json.loads.
    response = await post(client, "/api/bodies/loose", b'{"data": 1, "data": [2]}')
    assert (await response.get_json())["data"] == [2]
    # "NaN" inside a string is text, not a constant.
    response = await post(client, "/api/bodies/loose", b'{"data": "NaN Infinity"}')
    assert (await response.get_json())["data"] == "NaN Infinity"
    # Big integers and floats beyond a double.
    response = await post(client, "/api/bodies/loose", b'{"data": [123456789012345678901234567890, 1e400]}')
    assert response.status_code == 200


async def test_depth_limit_at_the_boundary(client):
    def nested(levels: int) -> bytes:  # ``levels`` containers in all, the outer object included
        return b'{"data": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"

    assert (await post(client, "/api/bodies/loose", nested(MAX_JSON_DEPTH))).status_code == 200
    body = await error_of(await post(client, "/api/bodies/loose", nested(MAX_JSON_DEPTH + 1)), 400)
    assert body["code"] == "json_too_deep"
    # Many containers side by side are not deep: accepted (by the guarded path).
    wide = json.dumps({"data": [[i] for i in range(MAX_JSON_DEPTH * 2)]}).encode()
    assert not shallow_json_text(wide)
    assert (await post(client, "/api/bodies/loose", wide)).status_code == 200


async def test_strict_fields_are_validated_from_python_objects(client):
    # From JSON text a strict UUID field would accept a string; from json.loads' str it does not.
    body = await error_of(await post(client, "/api/bodies/strict", b'{"id": "%s"}' % str(uuid.uuid4()).encode()), 400)
    assert body["code"] == "invalid_body" and "body.id" in body["error"]


async def test_decimal_fields_see_the_float_json_loads_gives(client):
    response = await post(client, "/api/bodies/money", b'{"amount": 12345678901234567890.123456789}')
    assert (await response.get_json())["amount"] == str(decimal.Decimal(str(12345678901234567890.123456789)))


async def test_deferred_model_and_sync_handler(client):
    response = await post(client, "/api/bodies/deferred", b'{"name": "n"}')
    assert response.status_code == 200
    assert await response.get_json() == {"name": "n"}


def test_body_reader_takes_the_json_path_only_where_it_validates_alike():
    assert BodyReader(Message).from_json()
    assert BodyReader(Loose).from_json()
    assert not BodyReader(StrictId).from_json()
    assert not BodyReader(Money).from_json()

    class Later(BaseModel):
        model_config = ConfigDict(defer_build=True)

        when: int

    reader = BodyReader(Later)
    assert reader.from_json()
    assert Later.__pydantic_complete__  # built on first use, not at declaration


def test_shallow_json_text():
    assert shallow_json_text(b'{"a": [1, {"b": 2}]}')
    assert not shallow_json_text(b"[" * (MAX_JSON_DEPTH + 1))
    assert not shallow_json_text(b'{"a": NaN}')
    assert not shallow_json_text(b'{"a": "-Infinity"}')  # conservative: the guarded path decides


def post_scope(path: str, length: int) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:4545"), (b"content-type", b"application/json"),
                    (b"content-length", str(length).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 4545), "extensions": {},
    }


async def drive(app, path: str, chunks: list[bytes], *, total: int, pause: float) -> tuple[int, bytes]:
    """One request whose body arrives in ``chunks`` with ``pause`` seconds before each later one;
    after the last chunk the body is complete only if the chunks add up to ``total`` bytes."""
    queue = list(chunks)
    sent: list[dict[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if not queue:
            await asyncio.Event().wait()  # the client sends nothing more and stays connected
        if not first:
            await asyncio.sleep(pause)
        first = False
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue) or sum(map(len, chunks)) < total}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(post_scope(path, total), receive, send), 10)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_a_body_arriving_in_parts_is_waited_for(make_kernel):
    kernel = await make_kernel(plugins={"bodies": BodiesPlugin()}, load_entry_points=False)
    app = build_app(kernel)
    raw = b'{"message": "split", "count": 2}'
    status, body = await drive(app, "/api/bodies/message/s1", [raw[:10], raw[10:]], total=len(raw), pause=0.05)
    assert status == 201
    assert json.loads(body)["message"] == "split"


async def test_a_body_that_stops_arriving_is_408_after_the_body_timeout(make_kernel, monkeypatch):
    from librefang import edge

    monkeypatch.setattr(edge, "DRAIN_TIMEOUT", 0.2)  # the edge's wait for the rest before answering
    kernel = await make_kernel(plugins={"bodies": BodiesPlugin()}, load_entry_points=False)
    app = build_app(kernel)
    app.config["BODY_TIMEOUT"] = 0.2
    raw = b'{"message": "never finished"}'
    status, body = await drive(app, "/api/bodies/message/s2", [raw[:10]], total=len(raw), pause=0)
    assert status == 408
    assert set(json.loads(body)) == {"error", "code", "request_id"}


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 201),
        ("application/json; charset=utf-8", 201),
        ("APPLICATION/JSON", 201),
        ("application/vnd.api+json", 201),
        ("text/plain", 415),
        ("application/jsonx", 415),
        ("application/json-seq", 415),
        (" application/json", 201),
    ],
)
async def test_content_types_are_judged_by_their_mimetype(client, content_type, status):
    response = await post(client, "/api/bodies/message/a1", b'{"message": "x"}', content_type)
    assert response.status_code == status


JSON_VALUES = [
    {"text": "héllo ✓ 😀", "n": 1, "f": 1e16, "small": 1.5e-7, "neg": -0.0, "big": 2**70},
    [1, "two", None, True, {"nested": [1.25, {"é": "ü"}]}],
    {"when": __import__("datetime").datetime(2026, 11, 29, 13, 0), "id": uuid.UUID(int=7),
     "dec": decimal.Decimal("1.10"), 3: "int key", "nan": float("nan")},
    {},
]


@pytest.mark.parametrize("value", JSON_VALUES)
@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("sort_keys", [False, True])
def test_compact_json_is_the_providers_text(value, ensure_ascii, sort_keys):
    from librefang.routing import _compact_json
    from quart import Quart
    from quart.json.provider import DefaultJSONProvider

    provider = DefaultJSONProvider(Quart("t"))
    provider.ensure_ascii, provider.sort_keys = ensure_ascii, sort_keys
    if sort_keys and isinstance(value, dict) and 3 in value:
        with pytest.raises(TypeError):
            provider.dumps(value, separators=(",", ":"))
        with pytest.raises(TypeError):
            _compact_json(provider, value)
        return
    for _ in range(2):  # the encoder is built, then reused
        assert _compact_json(provider, value) == provider.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("status", [200, 201, 404, 299])
async def test_json_response_is_the_response_quart_builds(status):
    from librefang.routing import json_response
    from quart import Response

    body = '{"é":"✓"}\n'
    ours = json_response(body.encode(), status)
    quarts = Response(body, status=status, content_type="application/json")
    assert type(ours) is type(quarts)
    assert list(ours.headers.items()) == list(quarts.headers.items())
    assert (ours.status, ours.status_code, ours.timeout) == (quarts.status, quarts.status_code, quarts.timeout)
    assert await ours.get_data() == await quarts.get_data()
