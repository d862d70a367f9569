"""Shared fixtures: the scripted LLM and a real Llama Stack come from lcore_core.testing."""

pytest_plugins = ["lcore_core.testing.fixtures"]
