"""The plugin host keeps the dependency order and each hook's implementation list between calls
(a turn calls several hooks): the kept lists must follow every change of the plugin set."""

from __future__ import annotations

import types

from librefang import hookimpl
from librefang.plugins import PluginHost


def plugin(calls: list[str], name: str, **marks: bool) -> types.SimpleNamespace:
    def status_info(kernel):
        calls.append(name)
        return name

    return types.SimpleNamespace(status_info=hookimpl(**marks)(status_info) if marks else hookimpl(status_info))


def host_with(**plugins: types.SimpleNamespace) -> PluginHost:
    host = PluginHost()
    for name, module in plugins.items():
        host.add_plugin(name, module)
    host.register_all()
    return host


def names(host: PluginHost, hook: str = "status_info", plugin: str | None = None) -> list[str]:
    return [name for name, _ in host.impls(hook, plugin)]


def test_impls_follow_added_failed_and_replaced_plugins() -> None:
    calls: list[str] = []
    host = host_with(b=plugin(calls, "b"), a=plugin(calls, "a"))
    assert names(host) == ["a", "b"]
    assert names(host) == ["a", "b"]  # the kept answer
    assert names(host, plugin="b") == ["b"]

    # a new plugin registered later
    record = host.add_plugin("c", plugin(calls, "c", tryfirst=True))
    host.pm.register(record.module, name="c")
    assert names(host) == ["c", "a", "b"]

    # a failed plugin is taken out
    host.fail("a", "broken")
    assert names(host) == ["c", "b"]
    assert [r.name for r in host.loaded()] == ["b", "c"]

    # a hot reload swaps the manager and the record's module
    fresh = plugin(calls, "b2")
    host.pm = host.build_manager({"b": fresh})
    host.records["b"].module = fresh
    assert [fn for name, fn in host.impls("status_info") if name == "b"] == [fresh.status_info]
    assert [value for _, value in host.call("status_info", kernel=None)] == ["c", "b2"]


def test_loaded_order_follows_a_record_that_fails_or_comes_back() -> None:
    calls: list[str] = []
    host = host_with(x=plugin(calls, "x"), y=plugin(calls, "y"))
    assert [r.name for r in host.loaded()] == ["x", "y"]
    host.records["x"].error = "failed on startup"
    assert [r.name for r in host.loaded()] == ["y"]
    host.records["x"].error = None
    assert [r.name for r in host.loaded()] == ["x", "y"]
    returned = host.loaded()
    returned.clear()  # a caller's list is its own
    assert [r.name for r in host.loaded()] == ["x", "y"]
