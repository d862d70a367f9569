"""What LCore puts on the wire to Llama Stack (server mode), seen by a loopback proxy in front of
the real server: the configured API key on every call, the answer's call and the stream's."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.tcp_proxy import TcpProxy

from .support import lcore_config, parse_sse, started


def requests_to(sent: bytes, path: bytes) -> list[bytes]:
    """The header blocks of the requests for `path` (lower-cased)."""
    blocks = [b"POST " + part for part in sent.split(b"POST ")[1:]]
    return [block.split(b"\r\n\r\n", 1)[0].lower() for block in blocks
            if block.startswith(b"POST " + path + b" ")]


async def test_the_api_key_goes_with_each_answer_call(tmp_path: Path, llama_stack_server: Any,
                                                      llm: Any) -> None:
    host, port = llama_stack_server.url.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    proxy.record = True
    key = f"llama-key-{uuid.uuid4().hex}"
    config = lcore_config(tmp_path, "server", f"http://127.0.0.1:{proxy.port}")
    text = config.read_text().replace(f"url: http://127.0.0.1:{proxy.port}",
                                      f"url: http://127.0.0.1:{proxy.port}\n  api_key: {key}")
    config.write_text(text)
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
    expected = b"authorization: bearer " + key.lower().encode()
    assert all(expected in call for call in calls), calls
    assert all(b"content-type: application/json" in call for call in calls), calls


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
