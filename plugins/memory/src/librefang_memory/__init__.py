"""LibreFang plugin: agent memory (KV, proactive memory, search, relations)."""
