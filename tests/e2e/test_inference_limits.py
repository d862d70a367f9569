"""`inference.max_tool_calls` and `inference.max_infer_iters` bound one answer: a model that
keeps calling a real MCP tool is cut off where the configuration says, in both modes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.tcp_proxy import TcpProxy

from .support import MODES, Lcore, backend_for, lcore_config, parse_sse, started

MAX_TOOL_CALLS = 2
MAX_INFER_ITERS = 4


@pytest.fixture(scope="module", params=MODES)
async def limited_lcore(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                        llama_stack_server: Any, llama_stack_library_config: Path,
                        mcp_test_server: Any) -> AsyncIterator[Lcore]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"limits-{mode}")
    llama = backend_for(request, mode, llama_stack_server, llama_stack_library_config)
    app = create_app(lcore_config(workdir, mode, llama,
                                  mcp_servers=[{"name": "weather", "url": mcp_test_server.url}],
                                  inference={"max_tool_calls": MAX_TOOL_CALLS,
                                             "max_infer_iters": MAX_INFER_ITERS}),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), mode, workdir)


def keep_calling(llm: Any, marker: str) -> None:
    """A model that asks for the weather again after every answer it gets."""
    llm.script(marker, tool_call=("get_weather", {"city": "Oslo"}), tool_rounds=1000)


def model_rounds(llm: Any, marker: str) -> int:
    return sum(1 for r in llm.chat_requests if marker in r.text and r.tool_names)


async def test_tool_calls_stop_at_max_tool_calls(limited_lcore: Lcore, llm: Any,
                                                 mcp_server: Any) -> None:
    keep_calling(llm, "loop the weather")
    response = await limited_lcore.query("loop the weather", generate_topic_summary=False)
    assert response.status_code == 200, await response.get_data(as_text=True)
    ran = [c for c in mcp_server.tool_calls if c.name == "get_weather"]
    assert len(ran) == MAX_TOOL_CALLS
    # The model went on asking until the round limit; the calls past the limit never ran.
    assert model_rounds(llm, "loop the weather") == MAX_INFER_ITERS


async def test_a_stream_is_bounded_the_same_way(limited_lcore: Lcore, llm: Any,
                                                mcp_server: Any) -> None:
    keep_calling(llm, "stream the weather loop")
    response = await limited_lcore.client.post(
        "/v2/streaming_query", json={"query": "stream the weather loop",
                                     "generate_topic_summary": False})
    events = parse_sse(await response.get_data(as_text=True))
    assert events[-1]["event"] == "end", events
    assert len([c for c in mcp_server.tool_calls if c.name == "get_weather"]) == MAX_TOOL_CALLS
    assert model_rounds(llm, "stream the weather loop") == MAX_INFER_ITERS


def responses_bodies(sent: bytes) -> list[dict[str, Any]]:
    """The JSON bodies of the `POST /v1/responses` calls in a recorded byte stream."""
    bodies = []
    for part in sent.split(b"POST /v1/responses ")[1:]:
        head, _, rest = part.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        bodies.append(json.loads(rest[:length]))
    return bodies


@pytest.mark.parametrize("inference", [{"max_tool_calls": 3, "max_infer_iters": 7},
                                       {"max_tool_calls": None, "max_infer_iters": None}])
async def test_the_limits_go_in_the_responses_call(tmp_path: Path, llama_stack_server: Any,
                                                   llm: Any, inference: dict[str, Any]) -> None:
    host, port = llama_stack_server.url.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    proxy.record = True
    config = lcore_config(tmp_path, "server", f"http://127.0.0.1:{proxy.port}",
                          inference=inference)
    try:
        async with started(create_app(config, plugins=load_plugins(entrypoints=False))) as app:
            client = app.test_client()
            answer = await client.post("/v2/query", json={"query": "limits on the wire",
                                                           "generate_topic_summary": False})
            assert answer.status_code == 200, await answer.get_data(as_text=True)
            stream = await client.post("/v2/streaming_query",
                                       json={"query": "limits on the stream",
                                             "generate_topic_summary": False})
            assert parse_sse(await stream.get_data(as_text=True))[-1]["event"] == "end"
    finally:
        await proxy.close()
    bodies = responses_bodies(bytes(proxy.sent))
    assert len(bodies) == 2
    for body in bodies:
        for key, value in inference.items():
            # null: left out, so Llama Stack's own default applies.
            assert body.get(key) == value, body
            assert (key in body) is (value is not None), body
