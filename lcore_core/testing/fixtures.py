"""Pytest fixtures: the scripted LLM, a real Llama Stack server and a library-mode config.

Load with ``pytest_plugins = ["lcore_core.testing.fixtures"]`` in a root ``conftest.py``. The
servers are session-scoped (one Llama Stack per test session: it takes seconds to start); use the
function-scoped ``llm`` fixture to get the scripted LLM with no rules and an empty request log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lcore_core.testing.llama_stack import (
    LlamaStackServer,
    library_client_config,
    write_run_yaml,
)
from lcore_core.testing.llm import ScriptedLLM
from lcore_core.testing.mcp_server import MCPTestServer
from lcore_core.testing.ogx import OgxServer, ogx_available, write_ogx_run_yaml


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[ScriptedLLM]:
    """The scripted OpenAI-compatible LLM, shared by the whole session (not reset)."""
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
def reset_scripted_llm(scripted_llm: ScriptedLLM) -> Iterator[ScriptedLLM]:
    """Clear the scripted LLM's rules and request log before and after the test."""
    scripted_llm.reset()
    yield scripted_llm
    scripted_llm.reset()


@pytest.fixture
def llm(reset_scripted_llm: ScriptedLLM) -> ScriptedLLM:
    """The scripted LLM, reset for this test: script it with ``llm.script(...)``."""
    return reset_scripted_llm


@pytest.fixture(scope="session")
def llama_stack_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for Llama Stack state (databases, files, logs) for the session."""
    return tmp_path_factory.mktemp("llama-stack")


@pytest.fixture(scope="session")
def llama_stack_server(
    scripted_llm: ScriptedLLM, llama_stack_workdir: Path
) -> Iterator[LlamaStackServer]:
    """A real ``llama stack run`` on a free 127.0.0.1 port, backed by the scripted LLM."""
    run_yaml = write_run_yaml(llama_stack_workdir / "server", scripted_llm.base_url)
    server = LlamaStackServer(run_yaml)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llama_stack_library_config(scripted_llm: ScriptedLLM, llama_stack_workdir: Path) -> Path:
    """A run.yaml for ``AsyncLlamaStackAsLibraryClient``, with its state apart from the server's."""
    return library_client_config(llama_stack_workdir / "library", scripted_llm.base_url)


@pytest.fixture(scope="session")
def ogx_server(scripted_llm: ScriptedLLM, llama_stack_workdir: Path) -> Iterator[OgxServer]:
    """A real OGX 1.x server (https, self-signed: ``ca_cert``) backed by the scripted LLM; one
    per session. Skips when ``make install-ogx`` has not built ``.venv-ogx``."""
    if not ogx_available():
        pytest.skip("OGX is not installed (make install-ogx)")
    server = OgxServer(write_ogx_run_yaml(llama_stack_workdir / "ogx", scripted_llm.base_url))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mcp_test_server() -> Iterator[MCPTestServer]:
    """A real MCP server (streamable HTTP) offering ``get_weather(city)``, shared by the session."""
    with MCPTestServer() as server:
        yield server


@pytest.fixture
def mcp_server(mcp_test_server: MCPTestServer) -> MCPTestServer:
    """The MCP test server with its recorded headers and calls cleared for this test."""
    mcp_test_server.reset()
    return mcp_test_server
