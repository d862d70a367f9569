"""Shared fixtures: the scripted LLM and a real Llama Stack come from lcore_core.testing."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from lcore_core.testing.llama_stack import LlamaStackServer, write_run_yaml
from lcore_core.testing.llm import ScriptedLLM

pytest_plugins = ["lcore_core.testing.fixtures"]


@pytest.fixture
def own_stack(scripted_llm: ScriptedLLM, tmp_path: Path) -> Iterator[LlamaStackServer]:
    """A Llama Stack of this test alone: killing it must not disturb the shared one."""
    server = LlamaStackServer(write_run_yaml(tmp_path / "stack", scripted_llm.base_url))
    server.start()
    try:
        yield server
    finally:
        server.stop()
