"""Fake external services (LLM providers, ...) speaking their real wire formats on 127.0.0.1."""
