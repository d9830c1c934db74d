"""The core's hook specifications: the kernel's extension points (documented in ``docs/plugins.md``).

Lifecycle and status hooks may be ``async def``: the host awaits coroutine results (pluggy itself
is synchronous, so no hook here is ``firstresult``). Register hooks run once, synchronously, while
the daemon loads (and again for one plugin on a hot reload); they must be plain ``def`` and must
not start anything. They hand the plugin a ``register`` function: the host validates what is
registered, stamps it with the plugin's name and rejects duplicates, so a plugin writes one line per
thing it adds.

Plugins that offer extension points of their own (LLM providers, tools, channel adapters, ...)
declare their hookspecs in their own module and expose it as the attribute ``hookspecs`` of their
entry-point module; the host adds those specs before any hook is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from librefang.markers import hookspec

if TYPE_CHECKING:  # pragma: no cover
    import click

    from librefang.kernel import Kernel


@hookspec
def startup(kernel: Kernel) -> Any:
    """Called once when the plugin goes live: at daemon start (in dependency order, after every
    register hook ran and migrations were applied), and after a hot reload of this plugin.

    Receives the process's kernel. Start background work with ``kernel.tasks.spawn("<plugin>", coro)``
    so the host cancels it when the plugin stops. Raising here marks the plugin failed (its routes,
    config section and checks are dropped, its tasks cancelled); the daemon goes on without it.
    Returns nothing. May be ``async def``.
    """


@hookspec
def shutdown(kernel: Kernel) -> Any:
    """Called once when a started plugin stops: at daemon shutdown (reverse start order), and
    before a hot reload replaces it.

    Symmetric to ``startup``: stop everything the plugin started. Tasks spawned through
    ``kernel.tasks`` are cancelled by the host afterwards. An exception is logged and does not stop
    the other plugins' shutdown. Not called when ``startup`` raised. May be ``async def``.
    """


@hookspec
def register_config(register: Any) -> None:
    """Contribute a configuration section: ``register("section", PydanticModel)``.

    The model validates ``[section]`` of ``config.toml`` at start; its defaults apply when the
    section is absent, a bad value stops the start with a message naming ``section.key``, and its
    JSON Schema appears in ``GET /api/config/schema``. Read the validated value with
    ``kernel.config.section("section")``. A section name taken by the core or another plugin fails
    this plugin. Plain ``def``.
    """


@hookspec
def register_routes(register: Any) -> None:
    """Contribute HTTP routes: ``register(router)`` with a :class:`librefang.Router`.

    Each route of the router declares whether it is public and its rate-limit cost. Two plugins
    registering the same (method, path), or two routers with the same name, make the start fail
    loudly with an error naming both plugins. Every ``/api/...`` route is also served at
    ``/api/v1/...``. Plain ``def``.
    """


@hookspec
def register_migrations(register: Any) -> None:
    """Contribute database schema history: ``register("name", "/path/to/versions")``.

    The folder holds Alembic revision scripts with a single linear history owned by this plugin
    (its own version table, ``alembic_version_<name>``); the name must start with the plugin's name.
    Migrations are applied at start, before ``startup`` hooks run. Plain ``def``.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``librefang`` command line: ``cli.add_command(my_command)``.

    Called by the CLI (not the daemon) when a command name is not a core command, or for
    ``librefang --help``. Plain ``def``; commands that talk to the daemon use its HTTP API.
    """


@hookspec
def security_checks(register: Any) -> None:
    """Report a security system that is active: ``register("name", fn)``.

    ``fn(kernel)`` returns a JSON-able dict describing the system's real configuration and state
    (``"active": False`` marks it configured but off); it may be ``async``. ``GET /api/security``
    lists every registered system of a running plugin. A name registered by another owner fails
    this plugin. The hook itself is a plain ``def``.
    """


@hookspec
def status_info(kernel: Kernel) -> Any:
    """Contribute keys to ``GET /api/status`` (for example ``{"agent_count": 3}``).

    Called on every status request. Return a dict (or an awaitable of one); ``None`` adds nothing.
    An exception is logged and the plugin's keys are left out. May be ``async def``.
    """
