"""LibreFang approvals plugin: human approval of gated tool calls (see ``librefang_approvals.api``)."""
