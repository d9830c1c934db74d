"""The plugin host keeps the dependency order and each hook's implementation list between calls
(a turn calls several hooks): the kept lists must follow every change of the plugin set."""

from __future__ import annotations

import types

import pluggy
from librefang import hookimpl, hookspecs
from librefang.markers import PROJECT
from librefang.plugins import PluginBound, PluginHost, PluginRecord

hookspec = pluggy.HookspecMarker(PROJECT)


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


def test_impls_follow_changes_made_directly_on_the_manager_and_the_records() -> None:
    calls: list[str] = []
    host = host_with(a=plugin(calls, "a"), b=plugin(calls, "b"), c=plugin(calls, "c"))
    assert names(host) == ["a", "b", "c"]

    host.pm.unregister(name="b")  # straight through pluggy, not through fail()
    assert names(host) == ["a", "c"]
    host.pm.register(host.records["b"].module, name="b")
    assert names(host) == ["a", "b", "c"]

    host.pm.set_blocked("c")  # pluggy's blocking unregisters too
    assert names(host) == ["a", "b"]
    assert [value for _, value in host.call("status_info", kernel=None)] == ["a", "b"]

    del host.records["a"]  # a record removed
    assert names(host) == ["b"]
    host.records.pop("b")
    assert names(host) == []
    host.records.update(a=PluginRecord(name="a", module_name="a", module=host.pm.get_plugin("a")))
    assert names(host) == ["a"]


def test_order_follows_a_changed_dependency_and_a_replaced_records_mapping() -> None:
    calls: list[str] = []
    host = host_with(a=plugin(calls, "a"), b=plugin(calls, "b"))
    host.records["a"].distribution = "dist-a"
    host.records["b"].distribution = "dist-b"
    assert names(host) == ["a", "b"]
    host.records["a"].requires = {"dist-b"}  # a now depends on b: b comes first
    assert names(host) == ["b", "a"]
    assert [r.name for r in host.loaded()] == ["b", "a"]

    host.records = {"b": host.records["b"]}  # a new mapping is tracked as well
    assert names(host) == ["b"]
    host.records["a"] = PluginRecord(name="a", module_name="a", module=host.pm.get_plugin("a"))
    assert names(host) == ["a", "b"]


def test_a_hook_added_by_later_hookspecs_and_a_plain_pluggy_manager_are_seen() -> None:
    calls: list[str] = []

    class Specs:
        @hookspec
        def late_hook(self, kernel):
            """A plugin-offered hook whose spec arrives after the implementation registered."""

    def late_hook(kernel):
        return "late"

    host = host_with(b=plugin(calls, "b"))
    assert names(host, "late_hook") == []  # asked (and kept) before any plugin offers it
    host.pm.add_hookspecs(Specs)
    assert names(host, "late_hook") == []
    record = host.add_plugin("a", types.SimpleNamespace(late_hook=hookimpl(late_hook)))
    host.pm.register(record.module, name="a")
    assert [value for _, value in host.call("late_hook", kernel=None)] == ["late"]

    # a manager built outside the host (not by build_manager), then changed after the swap
    other = pluggy.PluginManager(PROJECT)
    other.add_hookspecs(hookspecs)
    other.register(host.records["b"].module, name="b")
    host.pm = other
    assert names(host) == ["b"]
    other.register(host.records["a"].module, name="a")
    assert names(host, "late_hook") == ["a"]  # registered on the swapped-in manager after the swap
    other.unregister(name="b")
    assert names(host) == []


async def test_acall_passes_only_named_arguments_and_binds_register_per_plugin() -> None:
    seen: list[tuple[str, object]] = []

    def with_kernel(kernel):
        seen.append(("k", kernel))

    async def without_args():
        seen.append(("none", None))
        return "async"

    def with_register(register):
        register("x")

    host = host_with(
        a=types.SimpleNamespace(status_info=hookimpl(with_kernel)),
        b=types.SimpleNamespace(status_info=hookimpl(without_args)),
    )
    assert await host.acall("status_info", kernel="K") == [("a", None), ("b", "async")]
    assert seen == [("k", "K"), ("none", None)]

    registered: list[tuple[str, str]] = []
    host2 = host_with(m=types.SimpleNamespace(register_config=hookimpl(with_register)))
    host2.call("register_config", register=PluginBound(lambda plugin, x: registered.append((plugin, x))))
    assert registered == [("m", "x")]
