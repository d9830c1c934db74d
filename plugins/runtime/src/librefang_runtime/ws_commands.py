"""The slash commands of the WebSocket chat (``{"type":"command","command","args"}``, brief §3.5)
and what they share with the ``response`` frame (context pressure) and ``agents_updated``.

Each handler returns the frame to send: a ``command_result`` (``command``, ``message`` and the
command's fields) or an ``error`` frame. Nothing here answers with invented data: ``budget`` needs
the budget plugin, and ``a2a`` answers "not available" because this daemon has no A2A client.
"""

from __future__ import annotations

import logging
from typing import Any

from librefang.errors import ApiError
from librefang_agents import api as agents_api

from librefang_runtime import session_admin as admin
from librefang_runtime.compactor import estimate_tokens
from librefang_runtime.history import trim

log = logging.getLogger("librefang.runtime.ws")

DEFAULT_CONTEXT_WINDOW = 200_000  # the reference's assumption when nothing says otherwise
VERBOSE_LEVELS = ("off", "on", "full")
MAX_LISTED_AGENTS = 500


def pressure(tokens: int, window: int) -> str:
    """``low|medium|high|critical`` for a prompt of ``tokens`` in a window of ``window`` tokens
    (the reference's thresholds: over 50, 70 and 85 percent)."""
    percent = 100.0 * tokens / max(window, 1)
    if percent > 85:
        return "critical"
    if percent > 70:
        return "high"
    if percent > 50:
        return "medium"
    return "low"


async def context_window(kernel: Any, manifest_window: int | None, provider: str, model: str) -> int:
    """The model's context window: the manifest's ``[model] context_window``, else the model
    catalog's, else :data:`DEFAULT_CONTEXT_WINDOW`."""
    if manifest_window:
        return int(manifest_window)
    service = kernel.services.get("providers.catalog")
    if service is not None:
        try:
            entry = (await service.catalog()).model_in(provider, model)
        except Exception as exc:  # a broken catalog must not break the chat
            log.warning("model catalog unavailable for the context window: %s", exc)
            entry = None
        if entry is not None:
            return int(entry.context_window)
    return DEFAULT_CONTEXT_WINDOW


def error(content: str, code: str) -> dict[str, Any]:
    return {"type": "error", "content": content, "code": code}


def result(command: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"type": "command_result", "command": command, "message": message, **fields}


async def agents_snapshot(runtime: Any) -> dict[str, Any]:
    """The ``agents_updated`` frame: every agent (at most 500) with its state and model."""
    page = await runtime.agents.list(limit=MAX_LISTED_AGENTS)
    agents = [{"id": a["id"], "name": a["name"], "state": a["state"], "mode": a["mode"],
               "model_provider": a["model_provider"], "model_name": a["model_name"]} for a in page["items"]]
    return {"type": "agents_updated", "agents": agents, "total": page["total"]}


async def context_report(runtime: Any, record: Any) -> dict[str, Any]:
    """``context``: how full the model's context window is with the canonical session's window of
    history (estimated), and what the last turn actually sent (reported by the provider)."""
    manifest = record.parsed()
    provider, model = runtime.resolve_model(manifest)
    window = await context_window(runtime.kernel, manifest.model.context_window, provider, model)
    info = await runtime.store.get(record.session_id) if record.session_id else None
    stored = await runtime.store.load(info.id, limit=manifest.max_history_messages) if info else []
    history = trim([s.message for s in stored], manifest.max_history_messages)
    estimated = estimate_tokens(history) + len(manifest.model.system_prompt or "") // 4
    _, last = await runtime.store.turns(record.id, limit=1)
    last_input = int(last[0]["input_tokens"] / max(last[0]["iterations"] or 1, 1)) if last else None
    used = max(estimated, last_input or 0)
    percent = round(100.0 * used / window, 1)
    level = pressure(used, window)
    message = (f"Context: ~{used} of {window} tokens ({percent}%), pressure {level}; "
               f"{len(history)} of {info.message_count if info else 0} messages in the window")
    return result("context", message, context_pressure=level, estimated_tokens=estimated,
                  last_input_tokens=last_input, context_window=window, percent=percent,
                  window_messages=len(history), session_messages=info.message_count if info else 0,
                  session_id=info.id if info else None)


def money(value: float) -> str:
    return f"${value:.4f}"


def cap(limit: float) -> str:
    return f"${limit:.2f}" if limit and limit > 0 else "unlimited"


async def budget_report(kernel: Any, record: Any) -> dict[str, Any]:
    """``budget``: the agent's and the daemon's spend against their caps (the budget plugin's)."""
    try:
        from librefang_budget import api as budget_api

        service = budget_api.service(kernel)
    except (ImportError, KeyError):
        return error("Budget tracking is not available: the budget plugin is not running.", "not_available")
    agent = await service.agent_status(record.id)
    daemon = await service.global_status()
    parts = [f"{w.capitalize()}: {money(agent[w]['spend'])} / {cap(agent[w]['limit'])}"
             for w in ("hourly", "daily", "monthly")]
    total = [f"{w.capitalize()}: {money(daemon[f'{w}_spend'])} / {cap(daemon[f'{w}_limit'])}"
             for w in ("hourly", "daily", "monthly")]
    message = f"Agent {record.name} — " + " | ".join(parts) + "\nAll agents — " + " | ".join(total)
    return result("budget", message, agent=agent, global_budget=daemon)


async def peers_report(runtime: Any, record: Any) -> dict[str, Any]:
    """``peers``: the other agents of this daemon (this daemon has no OFP peer network)."""
    page = await runtime.agents.list(limit=MAX_LISTED_AGENTS)
    others = [{"id": a["id"], "name": a["name"], "state": a["state"]} for a in page["items"] if a["id"] != record.id]
    if not others:
        return result("peers", "No other agents.", agents=[], total=0)
    lines = [f"{a['name']} — {a['state']} ({a['id']})" for a in others]
    more = page["total"] - 1 - len(others)
    message = "\n".join(lines) + (f"\n… and {more} more" if more > 0 else "")
    return result("peers", message, agents=others, total=page["total"] - 1)


async def model_choice(kernel: Any, arg: str) -> tuple[str | None, str] | None:
    """(provider or None to keep the agent's, model) named by ``model <arg>``, or None when the
    model catalog cannot tell what it names. In order: ``provider/model`` of a listed model; a
    model id or alias of the catalog (its provider comes with it, as in the reference); a model the
    catalog does not list under an explicit, known provider (``ollama/my-model``, like the HTTP
    route's ``{provider, model}``)."""
    head, slash, rest = arg.partition("/")
    service = kernel.services.get("providers.catalog")
    if service is None:  # no catalog to ask: read the argument as the HTTP route's fields
        return (head, rest) if slash and head and rest else (None, arg)
    catalog = await service.catalog()
    provider = catalog.provider(head) if slash and head and rest else None
    if provider is not None and (entry := catalog.model_in(provider.id, rest)) is not None:
        return provider.id, entry.id
    if (entry := catalog.find_model(arg)) is not None:
        return entry.provider, entry.id
    if provider is not None:
        return provider.id, rest
    return None


async def switch_model(connection: Any, arg: str) -> dict[str, Any]:
    """``model <provider/model | model>``: switch the agent's model through the agents plugin (the
    same checks, audit entry and ``agent.config_changed`` event as ``PUT /api/agents/{id}/model``;
    the event makes every socket send ``agents_updated``)."""
    runtime, record = connection.runtime, connection.record
    choice = await model_choice(runtime.kernel, arg)
    if choice is None:
        return error(f"Unknown model {arg[:200]!r}: the model catalog has no such model or alias (see GET "
                     "/api/models); name a provider for a model it does not list: <provider>/<model>",
                     "model_not_found")
    provider, model = choice
    updated = await agents_api.set_model(runtime.kernel, record.id, model, provider,
                                         actor=agents_api.Actor(name=connection.principal))
    configured = updated.parsed().model
    provider, model = agents_api.resolve_model(configured.provider, configured.model, runtime.agents.default_model())
    return result("model", f"Model switched to {provider}/{model}", provider=provider, model=model)


async def run_command(connection: Any, name: str, args: str) -> dict[str, Any] | None:
    """The reply frame of a command; None when the handler sent its frames itself."""
    runtime, record = connection.runtime, connection.record
    args = args.strip()
    if name == "new":
        info = await admin.create_and_switch(runtime, record, None)
        return result(name, "New session started", session_id=info.id)
    if name in ("reset", "reboot"):
        info = await admin.reset(runtime, record)
        message = "Session reset" if name == "reset" else "Session rebooted. Context cleared."
        return result(name, message, session_id=info.id)
    if name == "compact":
        await connection.send({"type": "compaction", "state": "started"})
        try:
            done = await runtime.compact_now(await runtime.agents.get(record.id))
        except ApiError:
            await connection.send({"type": "compaction", "state": "error"})
            raise
        message = ("Nothing to compact" if done is None else
                   f"Compacted {done.compacted_count} messages; kept {done.kept_messages}")
        await connection.send({"type": "compaction", "state": "complete"})
        return result(name, message)
    if name == "stop":
        stopped = await runtime.stop(record.id)
        return result(name, "Run cancelled." if stopped else "No active run to cancel.")
    if name == "usage":
        rows = await runtime.store.usage_of(record.id)
        totals = {"turns": len(rows), "input_tokens": sum(r["input_tokens"] for r in rows),
                  "output_tokens": sum(r["output_tokens"] for r in rows),
                  "cost_usd": round(sum(r["cost_usd"] or 0.0 for r in rows), 6)}
        message = (f"{totals['turns']} turns, {totals['input_tokens']} in / {totals['output_tokens']} out, "
                   f"${totals['cost_usd']}")
        return result(name, message, **totals)
    if name == "model":
        if args:
            return await switch_model(connection, args)
        provider, model = runtime.resolve_model((await runtime.agents.get(record.id)).parsed())
        return result(name, f"Current model: {provider}/{model}", provider=provider, model=model)
    if name == "context":
        return await context_report(runtime, await runtime.agents.get(record.id))
    if name == "verbose":
        if not args:  # no level given: the next one, as the dashboard's /verbose does
            level = VERBOSE_LEVELS[(VERBOSE_LEVELS.index(connection.verbose) + 1) % len(VERBOSE_LEVELS)]
        elif args.lower() in VERBOSE_LEVELS:
            level = args.lower()
        else:
            return error(f"verbose takes off, on or full, not {args[:32]!r}", "invalid_command_args")
        connection.verbose = level
        return result(name, f"Verbose level: {level}", level=level)
    if name == "queue":
        running = len(runtime.running.get(record.id, {}))
        pending = len(connection.turns)
        message = ("Agent is idle." if not running and not pending else
                   f"Agent is processing: {running} turn(s) running; {pending} message(s) of this "
                   "connection not answered yet.")
        return result(name, message, running=running, pending=pending)
    if name == "budget":
        return await budget_report(runtime.kernel, record)
    if name == "peers":
        return await peers_report(runtime, record)
    if name == "a2a":
        return error("A2A is not available: this daemon has no A2A client or discovered external agents.",
                     "not_available")
    return error(f"Unknown command: {name[:64]}", "unknown_command")
