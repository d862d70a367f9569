"""What LCore puts on the wire to Llama Stack (server mode), seen by a loopback proxy in front of
the real server: the configured API key on every call, the answer's call and the stream's."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.tcp_proxy import TcpProxy

from .support import lcore_config, parse_sse, started


def requests_to(sent: bytes, path: bytes) -> list[bytes]:
    """The header blocks of the requests for `path` (lower-cased)."""
    blocks = [b"POST " + part for part in sent.split(b"POST ")[1:]]
    return [block.split(b"\r\n\r\n", 1)[0].lower() for block in blocks
            if block.startswith(b"POST " + path + b" ")]


async def answer_calls_through_a_proxy(tmp_path: Path, llama_url: str,
                                       api_key: str | None) -> list[bytes]:
    """One query and one stream through LCore; the header blocks of its Responses calls."""
    host, port = llama_url.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    proxy.record = True
    config = lcore_config(tmp_path, "server", f"http://127.0.0.1:{proxy.port}")
    if api_key:
        url = f"url: http://127.0.0.1:{proxy.port}"
        config.write_text(config.read_text().replace(url, f"{url}\n  api_key: {api_key}"))
    try:
        async with started(create_app(config, plugins=load_plugins(entrypoints=False))) as app:
            client = app.test_client()
            answer = await client.post("/v2/query", json={"query": "key check, plain",
                                                           "generate_topic_summary": False})
            assert answer.status_code == 200, await answer.get_data(as_text=True)
            assert (await answer.get_json())["response"].startswith(
                "Scripted answer to: key check, plain")
            stream = await client.post("/v2/streaming_query",
                                       json={"query": "key check, streamed",
                                             "generate_topic_summary": False})
            events = parse_sse(await stream.get_data(as_text=True))
            assert events[-1]["event"] == "end", events
    finally:
        await proxy.close()
    calls = requests_to(bytes(proxy.sent), b"/v1/responses")
    assert len(calls) == 2, calls
    assert all(b"content-type: application/json" in call for call in calls), calls
    return calls


async def test_the_api_key_goes_with_each_answer_call(tmp_path: Path, llama_stack_server: Any,
                                                      llm: Any) -> None:
    key = f"llama-key-{uuid.uuid4().hex}"
    calls = await answer_calls_through_a_proxy(tmp_path, llama_stack_server.url, key)
    expected = b"authorization: bearer " + key.lower().encode()
    assert all(expected in call for call in calls), calls


async def test_the_api_key_from_the_clients_environment_variable_too(
        tmp_path: Path, llama_stack_server: Any, llm: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `llama_stack.api_key`, llama-stack-client reads LLAMA_STACK_CLIENT_API_KEY; the
    answer calls send it as the client's other calls do."""
    key = f"env-key-{uuid.uuid4().hex}"
    monkeypatch.setenv("LLAMA_STACK_CLIENT_API_KEY", key)
    calls = await answer_calls_through_a_proxy(tmp_path, llama_stack_server.url, None)
    expected = b"authorization: bearer " + key.lower().encode()
    assert all(expected in call for call in calls), calls


async def test_a_refused_answer_call_maps_as_the_clients_errors_do(
        tmp_path: Path, llama_stack_server: Any) -> None:
    """Llama Stack's own refusal (an unknown model) comes back as LCore's error for that status,
    with Llama Stack's reason; both ways of calling agree."""
    from lcore_core.config import load_config
    from lcore_core.errors import LCoreError
    from lcore_core.llama import LlamaStack, llama_errors

    config = load_config(lcore_config(tmp_path, "server", llama_stack_server.url),
                         load_plugins(entrypoints=False))
    llama = LlamaStack(config.llama_stack)
    await llama.open()
    body = {"model": f"no-such-model-{uuid.uuid4().hex[:6]}", "input": "hello"}
    errors: list[LCoreError] = []
    try:
        for call in (lambda: llama.respond(body, {}),
                     lambda: llama.client.post("/v1/responses", body=body, cast_to=object)):
            try:
                with llama_errors():
                    await call()
            except LCoreError as exc:
                errors.append(exc)
    finally:
        await llama.close()
    assert len(errors) == 2, errors
    direct, through_client = errors
    assert 400 <= direct.status < 500, (direct.status, direct.cause)
    assert (type(direct), direct.status, direct.cause) == (
        type(through_client), through_client.status, through_client.cause)
    assert body["model"] in direct.cause


async def test_an_error_answer_cut_short_is_a_lost_connection(tmp_path: Path) -> None:
    """Llama Stack 0.7 may answer 502 and break the connection inside the body (a dead MCP
    server). Both calls then fail as Llama Stack being unavailable (503, so the pipeline's retry
    without dead MCP servers still runs), never as an internal error."""
    import asyncio

    from lcore_core.config import load_config
    from lcore_core.errors import BackendUnavailable
    from lcore_core.llama import LlamaStack, llama_errors

    async def half_an_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 400\r\n\r\n{\"detail\": \"cannot rea")
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(half_an_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = load_config(lcore_config(tmp_path, "server", f"http://127.0.0.1:{port}"),
                         load_plugins(entrypoints=False))
    llama = LlamaStack(config.llama_stack)
    await llama.open()
    failures = []
    try:
        for call in (llama.respond, llama.respond_stream):
            with pytest.raises(BackendUnavailable) as caught, llama_errors():
                await call({"model": "m", "input": "hi"}, {})
            failures.append(caught.value)
    finally:
        await llama.close()
        server.close()
        await server.wait_closed()
    assert [f.status for f in failures] == [503, 503]
    assert all("closed" in f.cause for f in failures), failures

