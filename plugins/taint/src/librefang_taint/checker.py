"""The outbound text check: credential shapes, known secret values, operator patterns.

This is a best-effort filter, not an information-flow tracker: a secret that is encoded (base64,
split, reversed) before it leaves is not recognised. It never returns or logs the matched text, only
the *kind* of credential found.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

# (kind shown in refusals, pattern). Ordered from the most specific to the most generic.
SHAPES: list[tuple[str, re.Pattern[str]]] = [
    ("private key block", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}")),
    ("GitHub token", re.compile(r"\b(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}")),
    ("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}")),
    ("sk- API key", re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")),
    # a header value: a scheme and a credential, or one long credential (prose like "authorization:
    # pending" must pass)
    ("Authorization header", re.compile(
        r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|bearer|digest|token|negotiate|apikey|"
        r"aws4-hmac-sha256)\s+[A-Za-z0-9._~+/=\-]{6,}|[A-Za-z0-9._~+/=\-]{16,})")),
    ("bearer token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{12,}")),
    ("key=value secret", re.compile(
        r"(?i)(?<![A-Za-z0-9])(?:[A-Za-z0-9]+[_\-])*(?:api[_\-]?key|apikey|secret|token|password|passwd|pwd|"
        r"access[_\-]?key|private[_\-]?key|client[_\-]?secret|credentials?)[\"']?\s*[:=]\s*[\"']?"
        r"(?!\*{3})[^\s\"'&,;<>]{6,}")),
]
OPAQUE_CHARS = re.compile(r"[A-Za-z0-9_\-+/=]+")
MAX_DEPTH = 8
MAX_STRINGS = 10_000


@dataclass(frozen=True)
class Finding:
    """Why a text is refused (never the text itself)."""

    kind: str
    field: str
    rule: str = "builtin"


def opaque_token(text: str, min_length: int) -> bool:
    """A long run of token characters mixing upper case, lower case and digits (random keys do;
    hex digests, UUIDs and words do not)."""
    for match in OPAQUE_CHARS.finditer(text):
        run = match.group(0)
        if len(run) >= min_length and any(c.isupper() for c in run) and any(c.islower() for c in run) \
                and any(c.isdigit() for c in run):
            return True
    return False


def builtin_kind(text: str, secrets: Iterable[str], opaque_min: int) -> str | None:
    """The kind of credential ``text`` carries by shape or by known value, or None."""
    variants = [text]
    if "%" in text:  # a secret put in a URL is often percent-encoded
        variants.append(unquote(text))
    for variant in variants:
        for kind, pattern in SHAPES:
            if pattern.search(variant):
                return kind
        for value in secrets:
            if value in variant:
                return "secret value from the vault"
        if opaque_token(variant, opaque_min):
            return "long opaque token"
    return None


def strings_in(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value, with its dotted path (bounded depth)."""
    if isinstance(value, str):
        yield path, value
    elif depth < MAX_DEPTH and isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(item, f"{path}.{key}" if path else str(key), depth + 1)
    elif depth < MAX_DEPTH and isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings_in(item, f"{path}[{index}]", depth + 1)


def selected(data: dict[str, Any], fields: list[str]) -> list[tuple[str, str]]:
    """The (path, text) pairs of ``fields`` in a tool input (``*`` = every string)."""
    found: list[tuple[str, str]] = []
    for name in fields:
        if name == "*":
            found.extend(strings_in(data, ""))
        elif name in data:
            found.extend(strings_in(data[name], name))
        if len(found) > MAX_STRINGS:
            break
    return found[:MAX_STRINGS]


@dataclass(frozen=True)
class CompiledRule:
    name: str
    tools: tuple[str, ...]
    fields: tuple[str, ...]
    pattern: re.Pattern[str] | None
    builtin: bool
    reason: str

    def applies_to(self, tool: str) -> bool:
        return any(fnmatch.fnmatchcase(tool, glob) for glob in self.tools)


def compile_rules(sinks: dict[str, list[str]], rules: list[Any]) -> list[CompiledRule]:
    """The built-in sinks as rules (built-in checks only), then the operator's rules."""
    compiled = [CompiledRule(f"sink:{tool}", (tool,), tuple(fields), None, True, "")
                for tool, fields in sinks.items()]
    for rule in rules:
        flags = re.IGNORECASE if rule.ignore_case else 0
        compiled.append(CompiledRule(rule.name, tuple(rule.tools), tuple(rule.fields),
                                     re.compile(rule.pattern, flags) if rule.pattern else None,
                                     rule.builtin, rule.reason))
    return compiled


def check(tool: str, data: Any, rules: list[CompiledRule], secrets: list[str] | Callable[[], list[str]], *,
          opaque_min: int, max_chars: int) -> Finding | None:
    """The first finding for a call of ``tool`` with input ``data``, or None when it may go out.
    ``secrets`` may be a function returning them: called only when a built-in check has text to read."""
    if not isinstance(data, dict):
        return None
    for rule in rules:
        if not rule.applies_to(tool):
            continue
        pairs = selected(data, list(rule.fields))
        if sum(len(text) for _, text in pairs) > max_chars:
            return Finding("text too large to check", pairs[0][0] if pairs else "*", rule.name)
        for path, text in pairs:
            if rule.builtin:
                if callable(secrets):
                    secrets = secrets()
                kind = builtin_kind(text, secrets, opaque_min)
                if kind is not None:
                    return Finding(kind, path, rule.name)
            if rule.pattern is not None and rule.pattern.search(text):
                return Finding(rule.reason or f"text matching rule {rule.name!r}", path, rule.name)
    return None
