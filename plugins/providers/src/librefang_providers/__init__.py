"""LibreFang providers plugin: LLM drivers behind one interface, the model catalog, the provider API."""
