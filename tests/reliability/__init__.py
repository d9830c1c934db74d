"""Reliability harness: crash durability, API fuzzing, hostile inputs, soak (see docs/reliability.md)."""
