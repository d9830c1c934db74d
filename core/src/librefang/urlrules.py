"""URL rules whose URL builders are compiled on first use.

werkzeug compiles two URL *builder* functions (Python source generated through ``ast`` and
``compile``) for every rule when the rule is added to a map. They only serve ``url_for``, which the
daemon's API does not call on its paths, yet compiling them was most of the cost of building the app
(≈ 0.12 s of CPU for the ≈ 160 routes of every plugin, paid at start-up and again on every hot
reload). :class:`LazyBuildRule` compiles a builder the first time it is called, so ``url_for``
still works and gives the same URLs; matching (what serves requests) is compiled as before.
"""

from __future__ import annotations

from typing import Any

from quart.routing import QuartRule


class LazyBuildRule(QuartRule):
    """A :class:`~quart.routing.QuartRule` that compiles its URL builders on their first call."""

    def _compile_builder(self, append_unknown: bool = True) -> Any:
        compile_now = super()._compile_builder
        attr = "_build_unknown" if append_unknown else "_build"

        def build(rule: LazyBuildRule, *args: Any, **kwargs: Any) -> Any:
            # werkzeug binds what this returns as rule._build / rule._build_unknown; the first call
            # replaces that binding with the compiled builder (a repeat compile in a race is harmless).
            real = compile_now(append_unknown).__get__(rule, None)
            setattr(rule, attr, real)
            return real(*args, **kwargs)

        return build
