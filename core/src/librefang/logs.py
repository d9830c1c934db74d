"""Logging setup with secret redaction.

Two layers scrub every log line before it reaches a handler that writes it anywhere:

* credential *shapes* (``Bearer <token>``, ``api_key=...``, ``sk-...``, ``ghp_...``, ...), always;
* credential *values* the running kernel knows (its API key, config secrets, loaded vault
  secrets), from the sources a kernel adds to a :class:`Redactor` while it runs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

_LEVELS = {"trace": logging.DEBUG, "warn": logging.WARNING}
MASK = "***"
# Values shorter than this are not scrubbed by value: they would mangle ordinary words.
MIN_SECRET_LENGTH = 6
_PREFIXED = ("sk-", "ghp_", "xox", "AKIA", "AIza")
# Credential shapes scrubbed from every log line (the values themselves never get logged on purpose).
SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|x-api-key|token|secret|password|passwd|authorization)[\"']?\s*[:=]\s*[\"']?)"
        r"(?!bearer\s)[^\s\"',;]{4,}"
    ),
    re.compile(r"\b(sk-|ghp_|xox[bp]-|AKIA|AIza)[A-Za-z0-9_\-]{8,}"),
]


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1) if match.groups() else ""
    if not prefix or prefix.startswith(_PREFIXED):
        return MASK  # a vendor prefix is part of the secret's shape, not a label to keep
    return prefix + MASK


def scrub(text: str) -> str:
    """Replace credential-shaped substrings with ``***`` (the label before them is kept)."""
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(_mask, text)
    return text


def scrub_values(text: str, values: Iterable[str]) -> str:
    """Replace every occurrence of each known secret value (longest first) with ``***``."""
    for value in sorted({v for v in values if v and len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


SecretSource = Callable[[], Iterable[str]]


class Redactor:
    """Scrubs credential shapes and the values its sources name. Sources come and go with kernels."""

    def __init__(self) -> None:
        self._sources: list[SecretSource] = []
        self._lock = threading.Lock()

    def add_source(self, source: SecretSource) -> None:
        with self._lock:
            self._sources.append(source)

    def remove_source(self, source: SecretSource) -> None:
        with self._lock:
            self._sources = [s for s in self._sources if s is not source]

    def known_values(self) -> list[str]:
        values: list[str] = []
        for source in list(self._sources):
            try:
                values.extend(source())
            except Exception:  # noqa: BLE001 - a failing source must not break logging
                continue
        return values

    def __call__(self, text: str) -> str:
        return scrub_values(scrub(text), self.known_values())


class RedactingFilter(logging.Filter):
    """Scrubs the formatted message and the traceback text of every record passing a handler."""

    def __init__(self, redactor: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.redactor: Callable[[str], str] = redactor or scrub

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.redactor)
        return True


def redact_record(record: logging.LogRecord, redactor: Callable[[str], str]) -> None:
    """Scrub ``record`` in place: its message and, when present, its formatted traceback."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is logging's problem, not a leak
        return
    cleaned = redactor(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        # Formatters reuse exc_text when it is set, so the scrubbed traceback is what gets written.
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redactor(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor(record.stack_info)


def redacting_filters(logger: logging.Logger | None = None) -> list[RedactingFilter]:
    """The redacting filters on ``logger``'s handlers (root by default)."""
    target = logger or logging.getLogger()
    return [f for h in target.handlers for f in h.filters if isinstance(f, RedactingFilter)]


# Libraries that log a line per HTTP request at INFO (httpx) or DEBUG (httpcore): every LLM call
# would otherwise go through the daemon's handlers and log stream.
CHATTY_HTTP_LOGGERS = ("httpx", "httpcore")


def quiet_http_loggers(level: int) -> None:
    """Keep the per-request HTTP client loggers at WARNING unless debug logging is on (``level``
    is the daemon's log level; with debug they inherit it again)."""
    for name in CHATTY_HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else logging.WARNING)


def setup_logging(home: Path, level: str = "info") -> Redactor:
    """Log to stderr with redaction on every handler; returns the redactor kernels add sources to."""
    numeric = _LEVELS.get(level.lower(), getattr(logging, level.upper(), logging.INFO))
    root = logging.getLogger()
    root.setLevel(numeric)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    redactor = Redactor()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter(redactor))
        root.addHandler(handler)
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    quiet_http_loggers(numeric)
    return redactor
