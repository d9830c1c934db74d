"""What other plugins may import from the memory plugin.

    from librefang_memory.api import memory

    service = memory(kernel)
    await service.kv.put(agent_id, "key", {"any": "json"})
    found, mode = await service.search("favorite color", agent_id=agent_id, limit=5)
"""

from __future__ import annotations

from typing import Any

from librefang_memory.config import MemoryConfig, ProactiveMemoryConfig
from librefang_memory.kv import SHARED_NAMESPACE
from librefang_memory.service import MemoryService
from librefang_memory.store import LEVELS, Item, new_row

__all__ = ["LEVELS", "SHARED_NAMESPACE", "Item", "MemoryConfig", "MemoryService", "ProactiveMemoryConfig",
           "memory", "new_row"]


def memory(kernel: Any) -> MemoryService:
    """The memory service of a started kernel (``KeyError`` when the memory plugin is not running)."""
    return kernel.services["memory"]
