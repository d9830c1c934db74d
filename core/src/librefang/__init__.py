"""LibreFang for Python: the agent operating system daemon (microkernel core).

The public API for plugin authors: :data:`hookimpl`, :class:`Router`, :func:`current_kernel`,
the errors in :mod:`librefang.errors`, and the :class:`~librefang.kernel.Kernel` services.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from librefang.markers import hookimpl, hookspec

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from librefang.kernel import Kernel
    from librefang.routing import Router

__all__ = ["__version__", "hookimpl", "hookspec", "Router", "current_kernel", "Kernel"]


def current_kernel() -> Kernel:
    """The kernel serving the current request (inside a route handler)."""
    from quart import current_app

    return current_app.config["LIBREFANG_KERNEL"]


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep ``import librefang`` cheap for the CLI and cold start.
    if name == "Router":
        from librefang.routing import Router

        return Router
    if name == "Kernel":
        from librefang.kernel import Kernel

        return Kernel
    raise AttributeError(name)
