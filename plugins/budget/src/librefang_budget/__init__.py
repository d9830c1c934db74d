"""LibreFang plugin: LLM metering, budgets enforced before every call, usage analytics."""
