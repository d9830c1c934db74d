"""LibreFang plugin: the agent runtime (the agent loop, tools, sessions and the messaging API)."""
