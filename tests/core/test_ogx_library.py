"""Library mode on OGX: the in-process transport (streaming, failures, early close), the choice
of OGX over Llama Stack's library, and OGX's refusals mapped as a server's are. The full run
against OGX itself is tests/e2e/test_ogx_library.py."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Any

import httpx
import pytest

from lcore_core.errors import BackendUnavailable, LCoreError, NotFound, QuotaExceeded
from lcore_core.llama import LlamaStack, llama_errors
from lcore_core.ogx_library import BASE_URL, StreamingASGITransport


class Settings(dict[str, Any]):
    """What `LlamaStack` reads from the `llama_stack` section."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name)


def streaming_app(release: asyncio.Event, seen: dict[str, Any]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["scope"] = scope
        seen["body"] = (await receive())["body"]
        try:
            await send({"type": "http.response.start", "status": 201,
                        "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await release.wait()
            await send({"type": "http.response.body", "body": b"second", "more_body": False})
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise

    return app


async def test_a_response_streams_before_the_application_finishes() -> None:
    release, seen = asyncio.Event(), {}
    transport = StreamingASGITransport(streaming_app(release, seen))
    async with (asyncio.timeout(10),  # a transport that waits for the whole body never answers
                httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http,
                http.stream("POST", "/v1/responses?x=1", json={"q": 1}) as response):
        assert response.status_code == 201
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.aiter_raw()
        assert await asyncio.wait_for(chunks.__anext__(), 5) == b"first"  # app still waiting
        release.set()
        assert [c async for c in chunks] == [b"second"]
    assert json.loads(seen["body"]) == {"q": 1}
    assert seen["scope"]["path"] == "/v1/responses"
    assert seen["scope"]["query_string"] == b"x=1"
    assert seen["scope"]["asgi"]["spec_version"] == "2.4"


async def test_closing_a_stream_early_cancels_the_application() -> None:
    release, seen = asyncio.Event(), {}
    transport = StreamingASGITransport(streaming_app(release, seen))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        async with http.stream("GET", "/events") as response:
            assert await response.aiter_raw().__anext__() == b"first"
        assert seen.get("cancelled") is True


async def test_an_application_failure_before_its_answer_is_raised() -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise ConnectionError("provider down")

    async with httpx.AsyncClient(transport=StreamingASGITransport(broken),
                                 base_url=BASE_URL) as http:
        with pytest.raises(ConnectionError, match="provider down"):
            await http.get("/v1/models")


def refusing_app(status: int, message: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        # Starlette's error middleware re-raises what its handler answered, for a server's log.
        raise ValueError(message)

    return app


@pytest.mark.parametrize(("status", "message", "error"), [
    (404, "Conversation conv_1 not found", NotFound),
    (429, "rate limited", QuotaExceeded),
    (500, "boom", LCoreError),  # upstream's generic 500, not "backend down"
])
async def test_ogx_refusals_in_process_map_as_from_a_server(status: int, message: str,
                                                            error: type[Exception]) -> None:
    llama = LlamaStack(Settings(use_as_library_client=True, api_key=None, timeout=5))
    http = httpx.AsyncClient(transport=StreamingASGITransport(refusing_app(status, message)),
                             base_url=BASE_URL)
    llama._use_http(BASE_URL, http)
    with pytest.raises(error) as raised, llama_errors("conversations.retrieve"):
        await llama.client.conversations.retrieve("conv_1")
    assert message in str(raised.value.cause) or status == 429  # type: ignore[attr-defined]
    assert raised.value.status == status  # type: ignore[attr-defined]
    with pytest.raises(error):
        await llama.respond({"model": "m", "input": "hi"}, {})
    await llama.close()


@pytest.mark.parametrize(("backend", "expected"), [("ogx", True), ("llama_stack", False)])
def test_the_configured_backend_decides_library_mode(backend: str, expected: bool) -> None:
    llama = LlamaStack(Settings(use_as_library_client=True, backend=backend))
    assert llama.ogx_library() is expected


def test_auto_picks_ogx_only_when_llama_stack_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    llama = LlamaStack(Settings(use_as_library_client=True))
    installed = {"llama_stack": True, "ogx": True}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if installed.get(name) else None)
    assert llama.ogx_library() is False  # both installed: Llama Stack, as before
    installed["llama_stack"] = False
    assert llama.ogx_library() is True
    installed["ogx"] = False
    assert llama.ogx_library() is False  # neither: the Llama Stack error names the extra


async def test_ogx_library_mode_without_a_run_configuration_is_a_clear_error() -> None:
    llama = LlamaStack(Settings(use_as_library_client=True, backend="ogx"))
    with pytest.raises(BackendUnavailable) as raised:
        await llama.open()
    assert "library_client_config_path" in str(raised.value.cause)


@pytest.mark.parametrize("backend", ["ogx", "auto"])
def test_unified_mode_on_ogx_library_is_refused_before_anything_is_written(
        monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setattr(importlib.util, "find_spec",  # auto: OGX installed, Llama Stack not
                        lambda name: object() if name == "ogx" else None)
    llama = LlamaStack(Settings(use_as_library_client=True, backend=backend))
    with pytest.raises(BackendUnavailable) as raised:
        llama.refuse_unified_on_ogx()
    assert "OGX run configuration" in raised.value.response  # type: ignore[attr-defined]
    assert "library_client_config_path" in str(raised.value.cause)  # type: ignore[attr-defined]
    LlamaStack(Settings(use_as_library_client=True, backend="llama_stack")).refuse_unified_on_ogx()
    LlamaStack(Settings(url="http://x", backend="ogx")).refuse_unified_on_ogx()  # server mode
