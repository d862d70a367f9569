"""`POST /v1/streaming_query/interrupt`: the owner stops a live stream, which ends cleanly and
keeps the turn so far."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from .support import Lcore, parse_sse

WORDS = " ".join(f"word{i}" for i in range(40))
STOPPED = "\n\n*Response stopped by the user.*"


class OpenStream:
    """A streaming query read event by event, the way a browser reads it."""

    def __init__(self, lcore: Lcore, query: str, user: str | None = None) -> None:
        path = "/v2/streaming_query" + (f"?user_id={user}" if user else "")
        self.conn = lcore.client.request(path, method="POST",
                                         headers={"Content-Type": "application/json"})
        self.query = query
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self.closed = False

    async def __aenter__(self) -> OpenStream:
        await self.conn.__aenter__()
        await self.conn.send(json.dumps({"query": self.query,
                                         "generate_topic_summary": False}).encode())
        await self.conn.send_complete()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.__aexit__(*exc)

    async def next_event(self) -> dict[str, Any] | None:
        while b"\n\n" not in self.buffer:
            if self.closed:
                return None
            try:
                chunk = await asyncio.wait_for(self.conn.receive(), 30)
            except Exception:  # the body ended
                self.closed = True
                continue
            if not chunk:
                self.closed = True
            self.buffer += chunk
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        [event] = parse_sse(block.decode() + "\n\n")
        self.events.append(event)
        return event

    async def rest(self) -> list[dict[str, Any]]:
        while await self.next_event() is not None:
            pass
        return self.events


async def _interrupt(lcore: Lcore, request_id: str, user: str | None = None) -> Any:
    path = "/v1/streaming_query/interrupt" + (f"?user_id={user}" if user else "")
    return await lcore.client.post(path, json={"request_id": request_id})


async def test_owner_stops_a_stream_mid_answer(lcore: Lcore, llm: Any) -> None:
    llm.script("interrupt me mid answer", text=WORDS, chunk_delay=0.4)
    async with OpenStream(lcore, "interrupt me mid answer") as stream:
        start = await stream.next_event()
        assert start is not None and start["event"] == "start"
        request_id = start["data"]["request_id"]
        assert str(uuid.UUID(request_id)) == request_id
        first = await stream.next_event()
        assert first is not None and first["event"] == "token"

        response = await _interrupt(lcore, request_id)
        assert response.status_code == 200, await response.get_data(as_text=True)
        assert await response.get_json() == {"request_id": request_id, "interrupted": True,
                                             "message": "Streaming request interrupted"}
        stopped_at = time.monotonic()
        events = await stream.rest()
    # Ends at once (the model had about 15 s of words left), with the closing line and the
    # interrupted event, and no end event.
    assert time.monotonic() - stopped_at < 10
    assert [e["event"] for e in events[-2:]] == ["token", "interrupted"]
    assert events[-2]["data"]["token"] == STOPPED
    assert events[-1]["data"] == {"request_id": request_id}
    assert "end" not in [e["event"] for e in events]
    said = "".join(e["data"]["token"] for e in events[:-2] if e["event"] == "token")
    assert said and "word39" not in said

    # The turn so far is in the conversation, with the closing line.
    conversation_id = start["data"]["conversation_id"]
    stored = await lcore.client.get(f"/v1/conversations/{conversation_id}")
    assert stored.status_code == 200
    [turn] = (await stored.get_json())["chat_history"]
    answer = next(m["content"] for m in turn["messages"] if m["type"] == "assistant")
    assert answer == said + STOPPED
    # The stream has ended: interrupting it again stops nothing.
    again = await _interrupt(lcore, request_id)
    assert again.status_code == 200
    assert (await again.get_json())["interrupted"] is False
    assert len(lcore.runtime.streams) == 0


async def test_stop_while_waiting_for_the_model(lcore: Lcore, llm: Any) -> None:
    # The model says nothing for a long time: the interrupt must not wait for it.
    llm.script("interrupt before first word", text="late words", delay=20)
    async with OpenStream(lcore, "interrupt before first word") as stream:
        start = await stream.next_event()
        assert start is not None and start["event"] == "start"
        await asyncio.sleep(0.5)
        response = await _interrupt(lcore, start["data"]["request_id"])
        assert response.status_code == 200
        stopped_at = time.monotonic()
        events = await stream.rest()
    assert time.monotonic() - stopped_at < 10
    assert [e["event"] for e in events] == ["start", "token", "interrupted"]
    assert events[1]["data"]["token"] == STOPPED


async def test_another_user_cannot_stop_it(lcore: Lcore, llm: Any) -> None:
    llm.script("someone else's stream", text=WORDS, chunk_delay=0.3)
    async with OpenStream(lcore, "someone else's stream", user="owner-ann") as stream:
        start = await stream.next_event()
        assert start is not None
        request_id = start["data"]["request_id"]
        refused = await _interrupt(lcore, request_id, user="other-bob")
        assert refused.status_code == 403
        assert (await refused.get_json())["detail"] == {
            "response": "User does not have permission to interrupt this streaming request",
            "cause": f"User other-bob does not own streaming request with ID {request_id}"}
        # Still running: the owner stops it.
        assert (await _interrupt(lcore, request_id, user="owner-ann")).status_code == 200
        events = await stream.rest()
    assert events[-1]["event"] == "interrupted"


async def test_unknown_and_malformed_ids(lcore: Lcore) -> None:
    unknown = str(uuid.uuid4())
    response = await _interrupt(lcore, unknown)
    assert response.status_code == 404
    assert (await response.get_json())["detail"] == {
        "response": "Streaming Request not found",
        "cause": f"Streaming Request with ID {unknown} does not exist"}
    for bad in ({"request_id": "not-a-uuid"}, {}, {"request_id": unknown, "extra": 1}):
        malformed = await lcore.client.post("/v1/streaming_query/interrupt", json=bad)
        assert malformed.status_code == 422, bad


async def test_finished_stream_is_already_completed(lcore: Lcore, llm: Any) -> None:
    status, events = await lcore.stream("finish normally", generate_topic_summary=False)
    assert status == 200 and events[-1]["event"] == "end"
    request_id = events[0]["data"]["request_id"]
    late = await _interrupt(lcore, request_id)
    # Upstream's answer to an interrupt that lost the race with the stream's end.
    assert late.status_code == 200
    assert await late.get_json() == {
        "request_id": request_id, "interrupted": False,
        "message": "Streaming request already completed; nothing to interrupt"}
    assert (await _interrupt(lcore, request_id, user="other-bob")).status_code == 403
    assert len(lcore.runtime.streams) == 0
