"""The taint service of one kernel: checks a tool call's outbound text and records refusals."""

from __future__ import annotations

import logging
from typing import Any

from librefang_taint.checker import SHAPES, CompiledRule, Finding, check, compile_rules
from librefang_taint.config import TaintConfig

log = logging.getLogger("librefang.taint")

SERVICE_KEY = "taint"
MAX_TOOLS_REMEMBERED = 1000
SOURCE = "taint"


class TaintService:
    """``kernel.services["taint"]``: the compiled rules (rebuilt when the config changes) and counters."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.checked = 0
        self.violations = 0
        # (config section, rules section, their compiled rules, tool -> the rules that apply to it):
        # rebuilt when either section object is replaced (a config change replaces it).
        self._compiled: tuple[Any, Any, list[CompiledRule], dict[str, list[CompiledRule]]] | None = None

    @property
    def config(self) -> TaintConfig:
        return self.kernel.config.section("taint")

    @property
    def rules(self) -> list[Any]:
        return self.kernel.config.section("taint_rules").root

    def _current(self) -> tuple[Any, Any, list[CompiledRule], dict[str, list[CompiledRule]]]:
        config, rules = self.config, self.kernel.config.section("taint_rules")
        current = self._compiled
        if current is None or current[0] is not config or current[1] is not rules:
            current = self._compiled = (config, rules, compile_rules(config.sinks, rules.root), {})
        return current

    def compiled(self) -> list[CompiledRule]:
        """Every rule: the sinks' built-in checks, then the operator's rules."""
        return self._current()[2]

    def rules_for(self, tool: str) -> list[CompiledRule]:
        """The rules whose tool globs match ``tool`` (remembered per tool name, bounded)."""
        _, _, compiled, by_tool = self._current()
        found = by_tool.get(tool)
        if found is None:
            if len(by_tool) >= MAX_TOOLS_REMEMBERED:
                by_tool.clear()
            found = by_tool[tool] = [rule for rule in compiled if rule.applies_to(tool)]
        return found

    def secrets(self) -> list[str]:
        """Secret values the text must not carry: the vault's, and those the kernel redacts from logs
        (API key, secrets named in config)."""
        if not self.config.check_vault_values:
            return []
        values = set(self.kernel.vault.known_values())
        stream = getattr(self.kernel, "logstream", None)
        if stream is not None:
            try:
                values.update(v for v in stream.secret_values() if v and len(v) >= 6)
            except Exception:  # noqa: BLE001 - the vault's own values still apply
                pass
        return sorted(values, key=len, reverse=True)

    def find(self, tool: str, data: Any) -> Finding | None:
        """The first violation in a call's input, or None (also None when the check is switched off)."""
        config = self.config
        if not config.enabled:
            return None
        self.checked += 1
        rules = self.rules_for(tool)
        if not rules:  # most tools are no sink and match no rule: nothing to read, not even the vault
            return None
        return check(tool, data, rules, self.secrets, opaque_min=config.opaque_token_min_length,
                     max_chars=config.max_checked_chars)

    async def refuse(self, finding: Finding, call: Any, context: Any) -> str:
        """Record a refusal (audit entry, bus event) and return the reason the model reads."""
        self.violations += 1
        detail = {"tool": call.name, "field": finding.field, "kind": finding.kind, "rule": finding.rule,
                  "agent_id": context.agent_id, "agent_name": context.agent_name, "session_id": context.session_id}
        await self.kernel.audit.record("TaintViolation", actor=f"agent:{context.agent_name or context.agent_id}",
                                       target=call.name, detail=detail, outcome="denied")
        self.kernel.bus.publish("taint.violation", detail, source=SOURCE)
        log.warning("taint check refused %s for agent %s: %s in %s (rule %s)", call.name, context.agent_name,
                    finding.kind, finding.field, finding.rule)
        return (f"the outbound text in {finding.field!r} contains a {finding.kind}; secrets and credentials "
                "may not leave through this tool (taint check). Remove it and try again without it.")

    def describe(self) -> dict[str, Any]:
        """The live configuration for ``GET /api/security``."""
        config = self.config
        # Active only when a loaded plugin (the runtime) offers before_tool_call, i.e. really calls it.
        caller = getattr(self.kernel.plugins.pm.hook, "before_tool_call", None)
        offered = caller is not None and caller.spec is not None
        return {
            "active": config.enabled and offered,
            "enabled": config.enabled,
            "hooked_into_runtime": offered,
            "checked_before": "every tool call (before_tool_call); a violation becomes an error result",
            "sinks": config.sinks,
            "builtin_shapes": [kind for kind, _ in SHAPES] + [f"long opaque token (>= {config.opaque_token_min_length} chars)"],
            "check_vault_values": config.check_vault_values,
            "known_secret_values": len(self.secrets()),
            "rules": [{"name": r.name, "tools": r.tools, "fields": r.fields, "pattern": r.pattern is not None,
                       "builtin": r.builtin} for r in self.rules],
            "max_checked_chars": config.max_checked_chars,
            "calls_checked": self.checked,
            "violations": self.violations,
            "limitations": "best-effort filter: encoded or split secrets are not recognised",
        }
