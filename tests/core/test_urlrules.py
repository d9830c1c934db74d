"""URL builders compiled on first use (librefang.urlrules): same URLs, same matching, no compile at build."""

from __future__ import annotations

from librefang.app import build_app
from librefang.urlrules import LazyBuildRule
from quart import Quart, url_for
from quart.routing import QuartRule


def _app(rule_class: type) -> Quart:
    app = Quart("t")
    app.url_rule_class = rule_class

    @app.route("/items/<int:item_id>/files/<path:name>")
    async def item_file(item_id: int, name: str) -> str:
        return f"{item_id}:{name}"

    @app.route("/plain")
    async def plain() -> str:
        return "plain"

    return app


async def test_url_for_gives_the_same_urls_and_requests_match_the_same() -> None:
    lazy, eager = _app(LazyBuildRule), _app(QuartRule)
    for app in (lazy, eager):
        assert isinstance(next(iter(app.url_map.iter_rules("item_file"))), app.url_rule_class)
    cases = [("item_file", {"item_id": 7, "name": "a/b c.txt"}), ("item_file", {"item_id": 1, "name": "x", "q": "1"}),
             ("plain", {}), ("plain", {"extra": "é", "n": 2})]
    urls = []
    for app in (lazy, eager):
        async with app.test_request_context("/plain"):
            urls.append([url_for(endpoint, **values) for endpoint, values in cases])
            # a second call goes through the compiled builder installed by the first
            urls.append([url_for(endpoint, **values) for endpoint, values in cases])
    assert urls[0] == urls[1] == urls[2] == urls[3]
    assert urls[0][0] == "/items/7/files/a/b%20c.txt" and urls[0][3].startswith("/plain?")
    client = lazy.test_client()
    response = await client.get("/items/7/files/a/b.txt")
    assert response.status_code == 200 and await response.get_data(as_text=True) == "7:a/b.txt"
    assert (await client.get("/items/x/files/a")).status_code == 404


async def test_rules_compile_no_builder_until_used() -> None:
    app = _app(LazyBuildRule)
    rule = next(iter(app.url_map.iter_rules("plain")))
    lazy_build, lazy_unknown = rule._build, rule._build_unknown
    for builder in (lazy_build, lazy_unknown):
        assert builder.__func__.__qualname__.endswith("_compile_builder.<locals>.build")
    async with app.test_request_context("/plain"):
        assert url_for("plain") == "/plain"  # url_for appends unknown values: _build_unknown
    assert rule._build_unknown is not lazy_unknown  # replaced by werkzeug's compiled builder
    assert rule._build is lazy_build  # not needed yet, not compiled
    assert rule._build_unknown.__func__.__qualname__ != lazy_unknown.__func__.__qualname__


async def test_the_daemon_app_uses_lazy_rules(make_kernel) -> None:
    kernel = await make_kernel(load_entry_points=False)
    app = build_app(kernel)
    rules = list(app.url_map.iter_rules())
    ours = [rule for rule in rules if rule.endpoint != "static"]  # added by Quart() itself
    assert ours and all(isinstance(rule, LazyBuildRule) for rule in ours)
    response = await app.test_client().get("/api/health", scope_base={"client": ("127.0.0.1", 5)})
    assert response.status_code == 200
