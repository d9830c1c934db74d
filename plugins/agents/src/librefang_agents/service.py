"""The agent registry's logic, testable without HTTP: spawn, list, get, change, kill.

Every change is persisted before it is acknowledged; spawn, kill, configuration and mode changes
are published on the event bus (``agent.*``) and recorded in the audit chain.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from librefang.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge

from librefang_agents import templates as template_store
from librefang_agents import workspace
from librefang_agents.capabilities import MODES, effective_capabilities, inheritance_violations
from librefang_agents.config import AgentsConfig, default_model
from librefang_agents.manifest import AgentManifest, ManifestError, parse_manifest, validate_manifest
from librefang_agents.signing import SignatureError, verify_envelope
from librefang_agents.store import SORTS, STATES, AgentRecord, AgentStore, NameTaken, StaleRecord
from librefang_agents.views import detail, summary, summary_json

SOURCE = "agents"
MAX_RETRIES = 5
# How long a killed agent's id answers "already-deleted" (afterwards: 404, like an unknown id).
TOMBSTONE_RETENTION_SECONDS = 30 * 86400


@dataclass(frozen=True)
class Actor:
    """Who asked for a change (recorded in the audit chain) and the request it came with."""

    name: str = "system"
    request_id: str = ""


SYSTEM = Actor()


def parse_agent_id(value: str) -> str:
    """The canonical form of an agent id; :class:`BadRequest` when it is not a UUID."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise BadRequest(f"invalid agent id {value!r}: expected a UUID", code="invalid_agent_id") from None


def manifest_error(exc: ManifestError) -> BadRequest:
    """The 400 for a manifest that does not validate (names the key and line)."""
    return BadRequest(str(exc), code="invalid_manifest", details={"key": exc.key, "line": exc.line})


class AgentService:
    """The registry of one kernel (``kernel.services["agents"]``)."""

    def __init__(self, kernel: Any, config: AgentsConfig, trusted_signers: list[bytes]) -> None:
        self.kernel = kernel
        self.home: Path = kernel.home
        self.config = config
        self.trusted_signers = trusted_signers
        # Several daemons may share a PostgreSQL database; a SQLite file has one daemon (daemon.lock).
        self.store = AgentStore(kernel.db, shared=not kernel.db.is_sqlite)

    async def open(self) -> None:
        """Load the list index from the database; forget tombstones older than the retention."""
        await self.store.load()
        await self.store.trim_tombstones(time.time() - TOMBSTONE_RETENTION_SECONDS)

    # -- helpers ------------------------------------------------------------------------------
    def default_model(self) -> dict[str, str]:
        """``[default_model]`` as configured now."""
        return default_model(self.kernel)

    def _event(self, topic: str, record: AgentRecord, detail_: Any) -> None:
        """Publish a change on the bus (after it is committed)."""
        data = {"agent_id": record.id, "name": record.name}
        if isinstance(detail_, dict):
            data.update(detail_)
        self.kernel.bus.publish(topic, data, source=SOURCE)

    def _audited(self, action: str, agent_id: str, actor: Actor, detail_: dict[str, Any]) -> Any:
        """A store ``commit`` that writes the change and its audit entry in one transaction."""

        async def commit(write: Callable[[Any], Any]) -> Any:
            _, result = await self.kernel.audit.record_with(
                write, action, actor=actor.name, target=agent_id, detail=detail_, request_id=actor.request_id,
            )
            return result

        return commit

    async def get(self, agent_id: str) -> AgentRecord:
        """The agent with this id; 400 for a malformed id, 404 when there is none."""
        record = self.store.cached(agent_id)  # cached ids are canonical: a hit needs no parsing
        if record is not None:
            return record
        record = await self.store.get(parse_agent_id(agent_id))
        if record is None:
            raise NotFound(f"agent {agent_id} not found", code="agent_not_found")
        return record

    async def find(self, name: str) -> AgentRecord | None:
        """The agent called ``name``, if any."""
        return await self.store.get_by_name(name)

    # -- manifests from a spawn request ---------------------------------------------------------------
    def manifest_text(self, manifest_toml: str | None, signed_manifest: Any) -> tuple[str, str | None]:
        """The manifest text of a request and its signer's key, verifying a signed envelope.

        413 when too large; 403 for a bad, untrusted or mismatching signature, or for an unsigned
        manifest when ``[agents] require_signed_manifests`` is on.
        """
        text = manifest_toml or ""
        if len(text.encode("utf-8")) > self.config.max_manifest_bytes:
            raise PayloadTooLarge(
                f"manifest is larger than {self.config.max_manifest_bytes} bytes", code="manifest_too_large"
            )
        if signed_manifest:
            try:
                verified = verify_envelope(signed_manifest, self.trusted_signers)
            except SignatureError as exc:
                raise Forbidden(f"signed manifest rejected: {exc}", code="signature_invalid") from None
            if text.strip() and text.strip() != verified.manifest.strip():
                raise Forbidden("manifest_toml differs from the signed manifest", code="signature_mismatch")
            if len(verified.manifest.encode("utf-8")) > self.config.max_manifest_bytes:
                raise PayloadTooLarge(
                    f"manifest is larger than {self.config.max_manifest_bytes} bytes", code="manifest_too_large"
                )
            return verified.manifest, verified.signer_public_key
        if self.config.require_signed_manifests:
            raise Forbidden("this daemon only accepts manifests from trusted signers", code="signature_required")
        return text, None

    async def manifest_from_request(
        self, *, manifest_toml: str | None, template: str | None, name: str | None, signed_manifest: Any
    ) -> tuple[AgentManifest, str | None]:
        """Resolve a spawn request to a validated manifest and the signer's key (if signed)."""
        if signed_manifest and template:
            raise BadRequest("give either template or signed_manifest, not both", code="invalid_request")
        text, signer = self.manifest_text(manifest_toml, signed_manifest)
        if not text.strip():
            if not template:
                raise BadRequest("give manifest_toml, template or signed_manifest", code="invalid_request")
            text = await self.template_text(template)
        try:
            return parse_manifest(text, name=name), signer
        except ManifestError as exc:
            raise manifest_error(exc) from None

    async def template_text(self, name: str) -> str:
        """The TOML of a template; 400 for a bad name, 404 when unknown, 400 when it does not parse."""
        if not template_store.valid_template_name(name):
            raise BadRequest(f"invalid template name {name!r}: use letters, digits, '-' and '_'", code="invalid_template")
        found = await asyncio.to_thread(template_store.find_template, self.home, name)
        if found is None:
            raise NotFound(f"template {name!r} not found", code="template_not_found")
        if found.manifest is None:
            raise BadRequest(f"template {name!r} is invalid: {found.error}", code="invalid_manifest")
        return found.toml

    # -- spawn ------------------------------------------------------------------------------------
    async def spawn(
        self,
        manifest: AgentManifest,
        *,
        actor: Actor = SYSTEM,
        parent_id: str | None = None,
        signer: str | None = None,
        state: str = "Running",
    ) -> AgentRecord:
        """Register a new agent: capability check against the parent, persist, workspace, event, audit."""
        if parent_id is not None:
            parent = await self.get(parent_id)
            parent_caps = effective_capabilities(parent.parsed())
            if not parent_caps.agent_spawn:
                raise Forbidden(f"agent {parent.name!r} may not spawn agents", code="capability_denied")
            violations = inheritance_violations(parent_caps, effective_capabilities(manifest))
            if violations:
                raise Forbidden(
                    "a child agent cannot have more capabilities than its parent: " + "; ".join(violations),
                    code="capability_escalation",
                )
            parent_id = parent.id
        total, _ = await self.store.counts()
        if total >= self.config.max_agents:
            raise Conflict(f"the registry holds its maximum of {self.config.max_agents} agents", code="agent_limit_reached")
        now = time.time()
        random_bytes = os.urandom(32)  # both ids from one system call (uuid4 makes one each)
        record = AgentRecord(
            id=str(uuid.UUID(bytes=random_bytes[:16], version=4)),
            name=manifest.name,
            state=state,
            mode="full",
            manifest=manifest.to_data(),
            parent_id=parent_id,
            session_id=str(uuid.UUID(bytes=random_bytes[16:], version=4)),
            signer=signer,
            created_at=now,
            last_active=now,
            updated_at=now,
        )
        record.manifest["name"] = manifest.name
        info = {"parent_id": parent_id} if parent_id else {}
        if signer:
            info["signed_by"] = signer
        # The row and its audit entry: one transaction, shared with concurrent spawns.
        commit = self._audited("AgentSpawn", record.id, actor, {"name": record.name, **info})
        try:
            await self.store.insert(record, manifest, commit)
        except NameTaken:
            raise Conflict(f"an agent named {manifest.name!r} already exists", code="agent_already_exists") from None
        self._event("agent.spawned", record, info)
        return record

    async def spawn_request(
        self,
        *,
        manifest_toml: str | None = None,
        template: str | None = None,
        name: str | None = None,
        signed_manifest: Any = None,
        actor: Actor = SYSTEM,
        parent_id: str | None = None,
    ) -> AgentRecord:
        """``POST /api/agents`` without HTTP: resolve the manifest, then :meth:`spawn`."""
        manifest, signer = await self.manifest_from_request(
            manifest_toml=manifest_toml, template=template, name=name, signed_manifest=signed_manifest
        )
        return await self.spawn(manifest, actor=actor, parent_id=parent_id, signer=signer)

    async def ensure_default_agent(self) -> AgentRecord | None:
        """Spawn the default agent once, in a fresh home (an emptied registry stays empty)."""
        if not self.config.spawn_default_agent or await self.store.get_meta("default_agent_seeded"):
            return None
        total, _ = await self.store.counts()
        created = None
        if total == 0:
            text = await self.template_text(self.config.default_agent_template)
            manifest = parse_manifest(text)
            try:
                created = await self.spawn(manifest)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        await self.store.set_meta("default_agent_seeded", str(time.time()))
        return created

    # -- read -------------------------------------------------------------------------------------
    async def _page(
        self, q: str | None, status: str | None, sort: str, order: str, limit: int | None, offset: int
    ) -> tuple[list[Any], int, dict[str, list[str]], int]:
        if sort not in SORTS:
            raise BadRequest(f"invalid sort {sort!r}: use one of {', '.join(SORTS)}", code="invalid_sort")
        if order not in ("asc", "desc"):
            raise BadRequest(f"invalid order {order!r}: use asc or desc", code="invalid_order")
        state = None
        if status:
            matches = [s for s in STATES if s.lower() == status.strip().lower()]
            if not matches:
                raise BadRequest(f"invalid status {status!r}: use one of {', '.join(STATES)}", code="invalid_status")
            state = matches[0]
        limit = self.config.default_list_limit if limit is None else min(limit, 500)
        rows, total, children = await self.store.page(
            q=q.strip() if q else None, state=state, sort=sort, descending=order == "desc", limit=limit, offset=offset
        )
        return rows, total, children, limit

    async def list(
        self,
        *,
        q: str | None = None,
        status: str | None = None,
        sort: str = "name",
        order: str = "asc",
        limit: int | None = None,
        offset: int = 0,
    ) -> dict[str, Any]:
        """One page of agent summaries: ``{items, total, offset, limit}``.

        ``q`` matches name or description (case-insensitive substring), ``status`` a state,
        ``sort`` is name, created_at, last_active or state; anything else is a 400.
        """
        rows, total, children, limit = await self._page(q, status, sort, order, limit, offset)
        dm = self.default_model()
        items = [summary(r, children.get(r.id, []), dm) for r in rows]
        return {"items": items, "total": total, "offset": offset, "limit": limit}

    async def list_json(
        self, *, q: str | None, status: str | None, sort: str, order: str, limit: int | None, offset: int
    ) -> bytes:
        """:meth:`list` as JSON bytes, assembled from per-agent cached fragments (the hot path)."""
        rows, total, children, limit = await self._page(q, status, sort, order, limit, offset)
        dm = self.default_model()
        items = b",".join(summary_json(r, children.get(r.id, []), dm) for r in rows)
        return b'{"items":[%s],"total":%d,"offset":%d,"limit":%d}' % (items, total, offset, limit)

    async def describe(self, agent_id: str) -> dict[str, Any]:
        """``GET /api/agents/{id}``."""
        record = await self.get(agent_id)
        children = await self.store.children_of([record.id])
        return detail(record, record.parsed(), children.get(record.id, []), self.default_model())

    async def counts(self) -> dict[str, int]:
        total, active = await self.store.counts()
        return {"agent_count": total, "active_agent_count": active}

    # -- change -----------------------------------------------------------------------------------
    async def change(
        self,
        agent_id: str,
        mutate: Callable[[dict[str, Any]], None],
        *,
        actor: Actor = SYSTEM,
        audit: str = "AgentConfigChange",
        topic: str = "agent.config_changed",
        what: str = "",
        signer: str | None = None,
    ) -> AgentRecord:
        """Apply ``mutate`` to the stored manifest data, re-validate, check capabilities, and save.

        ``signer`` is the key of a signed manifest that replaced the whole manifest; any other
        change clears the agent's ``signed_by``.

        Retries when another writer changed the agent in between (optimistic concurrency).
        """
        for _attempt in range(MAX_RETRIES):
            record = await self.get(agent_id)
            data = dict(record.manifest)
            mutate(data)
            try:
                manifest = validate_manifest(data)
            except ManifestError as exc:
                raise manifest_error(exc) from None
            if record.parent_id:
                parent = await self.store.get(record.parent_id)
                if parent is not None:
                    violations = inheritance_violations(
                        effective_capabilities(parent.parsed()), effective_capabilities(manifest)
                    )
                    if violations:
                        raise Forbidden(
                            "a child agent cannot have more capabilities than its parent: " + "; ".join(violations),
                            code="capability_escalation",
                        )
            old_name = record.name
            record.name = manifest.name
            record.manifest = manifest.to_data()
            record.manifest["name"] = manifest.name
            record.signer = signer  # the signature covers only the exact manifest it signed
            info: dict[str, Any] = {"change": what} if what else {}
            if old_name != record.name:
                info["renamed_from"] = old_name
            try:
                # The change and its audit entry: one transaction (none when the save loses a race).
                await self.store.save(record, manifest, self._audited(audit, record.id, actor, {"name": record.name, **info}))
            except NameTaken:
                raise Conflict(f"an agent named {manifest.name!r} already exists", code="agent_already_exists") from None
            except StaleRecord:
                continue
            if old_name != record.name:
                await asyncio.to_thread(workspace.rename, self.home, old_name, record.name)
            self._event(topic, record, info)
            return record
        raise Conflict("the agent was changed concurrently; retry", code="concurrent_update")

    async def set_mode(self, agent_id: str, mode: str, *, actor: Actor = SYSTEM) -> AgentRecord:
        """Set the permission mode (observe, assist, full)."""
        if mode not in MODES:
            raise BadRequest(f"invalid mode {mode!r}: use one of {', '.join(MODES)}", code="invalid_mode")
        record = await self.get(agent_id)
        old = record.mode
        info = {"mode": mode, "previous": old}
        commit = self._audited("AgentModeChange", record.id, actor, {"name": record.name, **info})
        if not await self.store.set_fields(record.id, commit=commit, mode=mode, updated_at=time.time()):
            raise NotFound(f"agent {agent_id} not found", code="agent_not_found")
        record.mode = mode
        self._event("agent.mode_changed", record, info)
        return record

    async def set_state(self, agent_id: str, state: str, *, actor: Actor = SYSTEM) -> AgentRecord:
        """Move an agent to ``Running`` or ``Suspended`` (idempotent)."""
        record = await self.get(agent_id)
        old = record.state
        if old != state:
            action = "AgentResume" if state == "Running" else "AgentSuspend"
            info = {"state": state, "previous": old}
            commit = self._audited(action, record.id, actor, {"name": record.name, **info})
            if not await self.store.set_fields(record.id, commit=commit, state=state, updated_at=time.time()):
                raise NotFound(f"agent {agent_id} not found", code="agent_not_found")
            record.state = state
            self._event("agent.state_changed", record, info)
        return record

    async def touch(self, agent_id: str, session_id: str | None = None) -> None:
        """Record activity now (and optionally the agent's current session)."""
        values: dict[str, Any] = {"last_active": time.time()}
        if session_id is not None:
            values["session_id"] = session_id
        await self.store.set_fields(parse_agent_id(agent_id), **values)

    async def kill(self, agent_id: str, *, actor: Actor = SYSTEM) -> dict[str, Any]:
        """Remove an agent (workspace archived, uploads deleted). Repeating it answers ``already-deleted``."""
        canonical = parse_agent_id(agent_id)
        record = await self.store.get(canonical)
        if record is None or not await self.store.delete(
            record, self._audited("AgentKill", record.id, actor, {"name": record.name})
        ):
            if await self.store.was_killed(canonical):
                return {"status": "already-deleted", "agent_id": canonical}
            raise NotFound(f"agent {agent_id} not found", code="agent_not_found")
        await asyncio.to_thread(workspace.archive, self.home, record.name, record.id)
        files = self.kernel.services.get("agents.files")
        if files is not None:
            await files.delete_uploads_of(record.id)
        self._event("agent.killed", record, {})
        return {"status": "killed", "agent_id": record.id, "name": record.name}

    async def clone(
        self, agent_id: str, new_name: str, *, include_skills: bool = True, include_tools: bool = True,
        actor: Actor = SYSTEM,
    ) -> AgentRecord:
        """A new agent with the same manifest, identity and workspace files under ``new_name``."""
        source = await self.get(agent_id)
        data = dict(source.manifest)
        data["name"] = new_name
        if not include_skills:
            data.pop("skills", None)
            data.pop("skills_disabled", None)
        if not include_tools:
            for key in ("tool_allowlist", "tool_blocklist", "tools_disabled", "tools"):
                data.pop(key, None)
            data["capabilities"] = {k: v for k, v in dict(data.get("capabilities") or {}).items() if k != "tools"}
        try:
            manifest = validate_manifest(data)
        except ManifestError as exc:
            raise manifest_error(exc) from None
        record = await self.spawn(manifest, actor=actor)  # edited manifest: no longer covered by a signature
        if source.parent_id:
            await self.store.set_fields(record.id, parent_id=source.parent_id)
            record.parent_id = source.parent_id
        await asyncio.to_thread(
            workspace.copy_workspace, self.home, source.name, record.name, self.config.max_workspace_bytes
        )
        return record
