"""Writing ``[budget]`` back to config.toml (comments and other keys kept, validated first, backup
before the write), then making the new section live without touching any other section."""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any

from librefang.errors import BadRequest, ConfigError, Conflict

SECTION = "budget"


def _render(text: str, updates: dict[str, Any], provider: str | None) -> str:
    import tomlkit
    from tomlkit.items import InlineTable

    try:
        tomllib.loads(text)
        doc = tomlkit.parse(text)
    except Exception as exc:  # tomllib and tomlkit raise different types; both mean "fix it by hand"
        raise Conflict(f"config.toml cannot be parsed, fix it by hand first: {exc}", code="config_unparsable") from None
    table: Any = doc.get(SECTION)
    if table is None:
        table = doc[SECTION] = tomlkit.table()
    if not hasattr(table, "keys"):
        raise Conflict("config.toml: budget is not a table", code="config_unparsable")
    if provider is not None:
        providers = table.get("providers")
        if providers is not None and not hasattr(providers, "keys"):
            raise Conflict("config.toml: budget.providers is not a table; fix it by hand", code="config_unparsable")
        if providers is None:
            providers = table["providers"] = tomlkit.table(is_super_table=True)
        entry = providers.get(provider)
        if entry is None:
            # inside an inline table (providers = {...}) the new entry must be inline too
            entry = providers[provider] = tomlkit.inline_table() if isinstance(providers, InlineTable) else tomlkit.table()
        table = entry
    if not hasattr(table, "keys"):
        raise Conflict("config.toml: the [budget] entry to change is not a table; fix it by hand",
                       code="config_unparsable")
    for key, value in updates.items():
        table[key] = value
    return tomlkit.dumps(doc)


def _plan(kernel: Any, updates: dict[str, Any], provider: str | None) -> tuple[str, dict[str, Any]]:
    path = kernel.config.path
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    rendered = _render(text, updates, provider)
    raw = tomllib.loads(rendered)
    try:
        kernel.config.revalidated(raw)
    except ConfigError as exc:
        raise BadRequest(str(exc), code="invalid_budget") from None
    return rendered, raw


def _lock(kernel: Any) -> asyncio.Lock:
    # The same lock POST /api/config/set holds, so two writers never interleave on config.toml.
    lock = kernel.state.get("config_lock")
    if lock is None:
        lock = kernel.state["config_lock"] = asyncio.Lock()
    return lock


async def persist_budget(kernel: Any, updates: dict[str, Any], provider: str | None = None) -> None:
    """Set ``updates`` in ``[budget]`` (or ``[budget.providers.<provider>]``) of config.toml and apply
    the new ``[budget]`` at once. 400 when the result does not validate; nothing is written then."""
    from librefang.configfile import backup, write_atomic

    async with _lock(kernel):
        text, raw = await asyncio.to_thread(_plan, kernel, updates, provider)
        await asyncio.to_thread(backup, kernel.config.path, kernel.home)
        await asyncio.to_thread(write_atomic, kernel.config.path, text)
        owner = kernel.config.section_owners.get(SECTION, SECTION)
        kernel.config.raw[SECTION] = raw.get(SECTION, {})
        kernel.config.add_section(SECTION, kernel.config.section_models[SECTION], owner)
