"""Guarded JSON body parsing: content type, size, syntax and nesting depth."""

from __future__ import annotations

import json
from typing import Any

from librefang.errors import BadRequest, UnsupportedMediaType

MAX_JSON_DEPTH = 32


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``value`` nests containers deeper than ``limit`` (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _reject_constant(name: str) -> Any:
    # Python's decoder accepts NaN/Infinity, which are not JSON and which other clients cannot parse back.
    raise BadRequest(f"malformed JSON: {name} is not a valid JSON value", code="invalid_json")


def parse_json_bytes(raw: bytes) -> Any:
    """Parse JSON from bytes; raise :class:`BadRequest` naming the problem."""
    if not raw.strip():
        raise BadRequest("request body is empty; a JSON body is required", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_json") from None
    # The depth check runs on the parsed value; a pathological nesting may first hit
    # Python's recursion limit inside the decoder, which is reported the same way.
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", code="invalid_json"
        ) from None
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep") from None
    if json_depth_exceeds(value):
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep")
    return value


def shallow_json_text(raw: bytes) -> bool:
    """True when ``raw`` can go straight to pydantic's own JSON parser with the outcome
    :func:`parse_json_bytes` would give: at most :data:`MAX_JSON_DEPTH` ``{``/``[`` bytes in all (so
    nothing nests deeper, whatever sits in strings; ASCII bytes never occur inside a multi-byte
    UTF-8 sequence), and no ``NaN``/``Infinity`` token (pydantic's parser accepts them, ours refuses)."""
    return (raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH
            and b"NaN" not in raw and b"Infinity" not in raw)


async def read_json_bytes(request: Any) -> bytes:
    """The raw body of a Quart request whose content type is JSON (or unset)."""
    # The body is read before any refusal: a response sent while part of the body is still unread
    # makes Hypercorn close the keep-alive connection, and the client's next request on it fails
    # ("server disconnected"; found by the reliability harness, tests/reliability).
    wait_bytes = getattr(request.body, "wait_bytes", None)  # librefang.edgequart.EdgeBody
    if wait_bytes is not None:
        raw = await wait_bytes(request.body_timeout)
    else:
        raw = await request.get_data(cache=True, as_text=False)
    # The header as sent is checked first (the ASGI scope's first Content-Type: the one werkzeug
    # reads): "application/json" exactly, what clients send, needs no parsing of its parameters;
    # anything else is judged on werkzeug's parsed mimetype, as always.
    for name, value in getattr(request, "scope", {}).get("headers", ()):
        if name == b"content-type":
            if value == b"application/json":
                return raw
            break
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {mimetype}", code="unsupported_media_type"
        )
    return raw


async def read_json(request: Any) -> Any:
    """Read and parse the JSON body of a Quart request, checking its content type."""
    return parse_json_bytes(await read_json_bytes(request))
