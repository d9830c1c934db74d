"""What a turn derives from an agent's name, mode and manifest, kept between its turns by the runtime
(:meth:`~librefang_runtime.service.RuntimeService.prepare`): the validated manifest, the tools it may
use and their definitions, and its system prompt."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from librefang_agents import api as agents_api

from librefang_runtime.prompt import build_system_prompt


@dataclass
class AgentView:
    """What a turn derives from an agent's name, mode and manifest: the validated manifest, the tools
    it may use and their definitions, and its system prompt (rebuilt when the minute changes)."""

    manifest: Any
    allowed: list[str]
    definitions: list[Any]
    fallback_models: list[dict[str, Any]]
    _prompt: tuple[int, str] = (-1, "")  # (minute since the epoch, prompt): the prompt shows the minute
    workspace: Any = None  # the agent's workspace folder (its path; existence is checked per turn)
    workspace_path: str = ""  # the same as a string (os.path.isdir on it is the per-turn check)
    source: Any = None  # the manifest data it was derived from (a copy)

    def system_prompt(self, name: str) -> str:
        """The system prompt for an agent called ``name`` (it shows the current minute)."""
        seconds = time.time()
        minute = int(seconds // 60)
        if self._prompt[0] != minute:
            now = dt.datetime.fromtimestamp(seconds, dt.UTC)
            self._prompt = (minute, build_system_prompt(
                base=self.manifest.model.system_prompt, agent_name=name, description=self.manifest.description,
                tools=self.definitions, now=now))
        return self._prompt[1]


def usable_tools(manifest: Any, visible: list[str]) -> list[str]:
    """``visible`` without the tools the agent's capabilities would refuse anyway (no point offering
    ``agent_send`` to an agent that may message nobody)."""
    caps = agents_api.effective_capabilities(manifest)
    refused = set()
    if not caps.agent_message:
        refused.add("agent_send")
    if not caps.agent_spawn:
        refused.add("agent_spawn")
    if not caps.network:
        refused.add("web_fetch")
    return [name for name in visible if name not in refused]
