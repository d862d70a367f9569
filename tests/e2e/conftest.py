"""LCore apps wired to a real Llama Stack (server mode and library mode) and the scripted LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

from .support import MODES, Lcore, backend_for, lcore_config, started


@pytest.fixture(scope="session", params=MODES)
async def lcore(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                llama_stack_server: Any, llama_stack_library_config: Any) -> AsyncIterator[Lcore]:
    """One started app per mode for the whole session (library mode initialises once)."""
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"lcore-{mode}")
    llama = backend_for(request, mode, llama_stack_server, llama_stack_library_config)
    app = create_app(lcore_config(workdir, mode, llama),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), mode, workdir)


@pytest.fixture(autouse=True)
async def background_settled(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Let a test's background work (topic summaries) finish before the next test starts, so
    it never shows up in the next test's scripted-LLM requests or metrics."""
    yield
    for name in ("lcore", "mcp_lcore"):
        started = request.node.funcargs.get(name)
        if isinstance(started, Lcore):
            await started.runtime.drain()
