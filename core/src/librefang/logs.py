"""Logging setup with secret redaction."""

from __future__ import annotations

import logging
import re
from pathlib import Path

_LEVELS = {"trace": logging.DEBUG, "warn": logging.WARNING}
# Credential shapes scrubbed from every log line (the values themselves never get logged on purpose).
SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]{4,}"),
    re.compile(r"\b(sk-|ghp_|xox[bp]-|AKIA|AIza)[A-Za-z0-9_\-]{8,}"),
]


def scrub(text: str) -> str:
    """Replace credential-shaped substrings with ``***``."""
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() and m.group(1) and not m.group(1).startswith(("sk-", "ghp_", "xox", "AKIA", "AIza")) else "") + "***", text)
    return text


class RedactingFilter(logging.Filter):
    """Scrubs credential shapes from the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(home: Path, level: str = "info") -> None:
    """Log to stderr and ``<home>/logs/daemon.log`` with redaction on every handler."""
    numeric = _LEVELS.get(level.lower(), getattr(logging, level.upper(), logging.INFO))
    root = logging.getLogger()
    root.setLevel(numeric)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
