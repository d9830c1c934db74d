"""What the plugin host's kept hook lists depend on, and the helpers of a cheap hook call.

The host keeps the plugin order and each hook's implementation list between calls (a turn calls
several hooks). They are valid while :data:`generation` is unchanged: it is bumped by every change
they derive from. One integer comparison per hook call, instead of recomputing a key from every
record. Process-wide: a change in one host only costs another host a recomputation.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import pluggy

generation = 0


def changed() -> None:
    """Invalidate every kept hook list (a plugin record, the records, or a manager changed)."""
    global generation
    generation += 1


class TrackedRecords(dict[str, Any]):
    """The host's plugin records by name; every change bumps :data:`generation`."""

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        changed()

    def __ior__(self, other: Any) -> TrackedRecords:
        self.update(other)
        return self

    def pop(self, *args: Any) -> Any:
        try:
            return super().pop(*args)
        finally:
            changed()

    def popitem(self) -> tuple[str, Any]:
        try:
            return super().popitem()
        finally:
            changed()

    def clear(self) -> None:
        super().clear()
        changed()

    def update(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().update(*args, **kwargs)
        finally:
            changed()

    def setdefault(self, key: str, default: Any = None) -> Any:
        try:
            return super().setdefault(key, default)
        finally:
            changed()


class TrackedManager(pluggy.PluginManager):
    """A pluggy manager whose every change of hook implementations bumps the generation
    (``set_blocked`` and ``load_setuptools_entrypoints`` go through these too)."""

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            changed()

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        try:
            return super().unregister(plugin, name)
        finally:
            changed()

    def add_hookspecs(self, module_or_class: Any) -> None:
        try:
            super().add_hookspecs(module_or_class)
        finally:
            changed()


def arg_names(fn: Callable[..., Any]) -> frozenset[str]:
    """The parameter names of a hook implementation, kept on the function (on the underlying
    function of a bound method, which takes no attributes itself)."""
    holder = getattr(fn, "__func__", fn)
    wanted = getattr(holder, "_librefang_args", None)
    if wanted is None:
        wanted = frozenset(inspect.signature(fn).parameters)
        try:
            holder._librefang_args = wanted
        except AttributeError:
            pass
    return wanted  # type: ignore[no-any-return]


# Whether values of a type are awaitable (the answer depends on the type only, except for
# generators: a generator-based coroutine is told by a flag of its code). Bounded: cleared when full.
awaitable_types: dict[type, bool] = {}


def is_awaitable(value: Any) -> bool:
    """:func:`inspect.isawaitable`, answered from :data:`awaitable_types` after the first value of a type."""
    kind = type(value)
    known = awaitable_types.get(kind)
    if known is None:
        known = inspect.isawaitable(value)
        if kind is types.GeneratorType:
            return known
        if len(awaitable_types) >= 256:
            awaitable_types.clear()
        awaitable_types[kind] = known
    return known
