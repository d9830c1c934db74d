"""LibreFang agents plugin: the agent registry.

Manifests (TOML, optionally Ed25519-signed), lifecycle and persistence, tool profiles and
capability inheritance, bundled and user templates, per-agent workspaces and uploads. Other
plugins import :mod:`librefang_agents.api` only.
"""

__version__ = "0.1.0"
