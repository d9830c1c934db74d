"""The core's hook specifications: the kernel's extension points.

Every hook may be implemented as ``def`` or ``async def``; the host awaits coroutine results
(pluggy itself is synchronous, so no hook here is ``firstresult``). Register-callback hooks hand the
plugin a ``register`` function: the host validates what is registered, stamps it with the plugin's
name and rejects duplicates, so a plugin writes one line per thing it adds.

Plugins that offer extension points of their own (LLM providers, tools, channel adapters, ...)
declare their hookspecs in their own module and expose it as the module attribute ``hookspecs`` of
their entry-point module; the host adds those specs before any hook is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from librefang.markers import hookspec

if TYPE_CHECKING:  # pragma: no cover
    import click

    from librefang.kernel import Kernel


@hookspec
def startup(kernel: Kernel) -> Any:
    """Called once when the plugin goes live: at daemon start, and after a hot reload of this plugin.

    Receives the process's kernel. Start background work with ``kernel.tasks.spawn(...)`` so the host
    can cancel it when the plugin stops. Raising here marks the plugin failed; the daemon goes on
    without it. May be ``async def``.
    """


@hookspec
def shutdown(kernel: Kernel) -> Any:
    """Called once when the plugin stops: at daemon shutdown, and before a hot reload replaces it.

    Symmetric to ``startup``: stop everything the plugin started. Tasks spawned through
    ``kernel.tasks`` are cancelled by the host afterwards. May be ``async def``.
    """


@hookspec
def register_config(register: Any) -> None:
    """Contribute a configuration section: ``register("section", PydanticModel)``.

    The model validates ``[section]`` of ``config.toml``; its defaults apply when the section is
    absent, and its JSON Schema appears in ``GET /api/config/schema``. Read the validated value
    with ``kernel.config.section("section")``.
    """


@hookspec
def register_routes(register: Any) -> None:
    """Contribute HTTP routes: ``register(router)`` with a :class:`librefang.Router`.

    Each route of the router declares whether it is public and its rate-limit cost. Two plugins
    registering the same (method, path) make loading fail loudly. Every ``/api/...`` route is also
    served at ``/api/v1/...``.
    """


@hookspec
def register_migrations(register: Any) -> None:
    """Contribute database schema history: ``register("name", "/path/to/versions")``.

    The folder holds Alembic revision scripts with a single linear history owned by this plugin
    (its own version table, ``alembic_version_<name>``). Migrations are applied at start, before
    ``startup`` hooks run.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``librefang`` command line: ``cli.add_command(my_group)``."""


@hookspec
def security_checks(register: Any) -> None:
    """Report a security system that is active: ``register("name", fn)``.

    ``fn(kernel)`` returns a JSON-able dict describing the system's real configuration and state;
    it may be ``async``. ``GET /api/security`` lists every registered system.
    """


@hookspec
def status_info(kernel: Kernel) -> Any:
    """Contribute keys to ``GET /api/status`` (for example ``{"agent_count": 3}``).

    Return a dict (or an awaitable of one); ``None`` adds nothing.
    """
