"""The floor: the thinnest ASGI app that forwards a query to Llama Stack's Responses API.

`POST /v2/query` and `POST /v2/streaming_query` take `{"query": ...}`, make one Responses call
with httpx (the same content LCore sends, minus the conversation) and pass the answer back
unchanged. No auth, no storage, no metrics, no validation: what any Python forwarder on this
stack costs at least. Served by Hypercorn: `hypercorn bench.floor:app`; `FLOOR_LLAMA_URL` and
`FLOOR_MODEL` say where to forward.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

LLAMA = os.environ.get("FLOOR_LLAMA_URL", "http://127.0.0.1:8321")
MODEL = os.environ.get("FLOOR_MODEL", "openai/scripted-llm")
INSTRUCTIONS = os.environ.get("FLOOR_INSTRUCTIONS", "You are a helpful assistant")
_client: httpx.AsyncClient | None = None


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _client
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _client = httpx.AsyncClient(base_url=LLAMA, timeout=60, trust_env=False,
                                            limits=httpx.Limits(max_connections=None))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _client is not None:
                    await _client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert _client is not None
    query = json.loads(await _body(receive))["query"]
    streaming = scope["path"].endswith("streaming_query")
    payload = {"model": MODEL, "input": query, "instructions": INSTRUCTIONS, "store": True,
               "stream": streaming}
    if not streaming:
        response = await _client.post("/v1/responses", json=payload)
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": response.content})
        return
    async with _client.stream("POST", "/v1/responses", json=payload) as response:
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": [(b"content-type", b"text/event-stream")]})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
