"""LibreFang plugin: refuses tool calls whose outbound text carries a credential or a vault secret."""
