"""A real LCore with lcore-a2a served by Hypercorn on a free loopback port, in the test's loop,
in front of the session's real Llama Stack and scripted LLM; and the official a2a-sdk client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lcore_a2a.plugin
import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.types import AgentCard, Message, Part, Role, Task, TextPart
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from tests.e2e.support import lcore_config

STARTUP_TIMEOUT_S = 60


@dataclass
class Served:
    """A running LCore: its base URL, app and an HTTP client that talks to it."""

    url: str
    app: Any
    http: httpx.AsyncClient

    @property
    def runtime(self) -> Any:
        return self.app.runtime

    async def card(self) -> AgentCard:
        return await A2ACardResolver(self.http, self.url).get_agent_card()

    async def client(self, *, streaming: bool) -> Client:
        config = ClientConfig(httpx_client=self.http, streaming=streaming)
        return ClientFactory(config).create(await self.card())

    async def rpc(self, payload: Any, **kwargs: Any) -> httpx.Response:
        if not isinstance(payload, str | bytes):
            return await self.http.post(f"{self.url}/a2a", json=payload, **kwargs)
        return await self.http.post(f"{self.url}/a2a", content=payload,
                                    headers={"Content-Type": "application/json"}, **kwargs)


@contextlib.asynccontextmanager
async def serving(config: Path, *, plugins: Any = None,
                  headers: dict[str, str] | None = None) -> AsyncIterator[Served]:
    """`lcore serve` in miniature: the app under Hypercorn, start-up and shutdown included."""
    if plugins is None:
        plugins = load_plugins(entrypoints=False, extra=[lcore_a2a.plugin])
    app = create_app(config, plugins=plugins)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    settings = HypercornConfig()
    settings.bind = [f"fd://{sock.detach()}"]
    settings.accesslog = None
    settings.graceful_timeout = 1.0
    settings.startup_timeout = STARTUP_TIMEOUT_S
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, settings, shutdown_trigger=stop.wait))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=60, headers=headers or {}) as http:
        try:
            await _wait_until_up(http, url, server)
            yield Served(url, app, http)
        finally:
            stop.set()
            await asyncio.wait_for(server, 30)


async def _wait_until_up(http: httpx.AsyncClient, url: str, server: asyncio.Task[Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    while loop.time() < deadline:
        if server.done():
            server.result()  # start-up failed: raise its error
            raise AssertionError("the server stopped during start-up")
        # Hypercorn accepts connections once start-up is complete: any answer will do (the
        # configured authorization may refuse /health).
        with contextlib.suppress(httpx.TransportError):
            await http.get(f"{url}/health", timeout=2)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"LCore did not answer /health within {STARTUP_TIMEOUT_S}s")


ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path, llama_stack_server: Any) -> ConfigWriter:
    """`write_config(**sections)`: a lightspeed-stack.yaml for server mode with those sections."""

    def write(**overrides: Any) -> Path:
        return lcore_config(tmp_path, "server", llama_stack_server.url, **overrides)

    return write


def user_message(text: str, context_id: str | None = None) -> Message:
    return Message(role=Role.user, parts=[Part(root=TextPart(text=text))],
                   message_id=uuid.uuid4().hex, context_id=context_id)


def text_of(parts: Any) -> str:
    return "".join(p.root.text for p in parts if getattr(p.root, "kind", "") == "text")


def answer(task: Task) -> str:
    """The text of the task's answer artifact."""
    assert task.artifacts, task
    return text_of(task.artifacts[0].parts)
