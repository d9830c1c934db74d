"""Wiring of the providers plugin (hooks only)."""

from __future__ import annotations

from librefang_providers import hookspecs  # noqa: F401  (offered to other plugins by the host)
