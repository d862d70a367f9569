"""The write-timeout wrapper (lcore_core.write_timeout) and its configuration key."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lcore_core.plugins import load_plugins
from lcore_core.write_timeout import PIECE, with_write_timeout

from .test_config import BASE, errors

TIMEOUT = 0.3


class Peer:
    """The server side of `send`: records what was written; `stall` makes writes wait until
    `resume` is set, as Hypercorn's does while the client's socket buffer is full."""

    def __init__(self, *, stall_after: int | None = None, piece_seconds: float = 0.0) -> None:
        self.written: list[dict[str, Any]] = []
        self.stall_after = stall_after
        self.piece_seconds = piece_seconds
        self.resume = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        if self.stall_after is not None and len(self.written) >= self.stall_after:
            await self.resume.wait()
        await asyncio.sleep(self.piece_seconds)
        self.written.append(message)


async def receive() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


def app_sending(*bodies: bytes, finished: list[str]) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i, body in enumerate(bodies):
                await send({"type": "http.response.body", "body": body,
                            "more_body": i < len(bodies) - 1})
            finished.append("done")
        except asyncio.CancelledError:
            finished.append("cancelled")
            raise
    return app


async def run(app: Any, peer: Peer, counted: list[int]) -> None:
    wrapped = with_write_timeout(app, TIMEOUT, lambda: counted.append(1))
    await wrapped({"type": "http", "path": "/x", "client": ("127.0.0.1", 1)}, receive, peer.send)


async def test_large_bodies_go_out_in_bounded_pieces() -> None:
    finished: list[str] = []
    peer, counted = Peer(), []
    body = bytes(range(256)) * (PIECE * 3 // 256 + 7)
    await run(app_sending(b"head", body, finished=finished), peer, counted)
    sent = [m for m in peer.written if m["type"] == "http.response.body"]
    assert all(len(m["body"]) <= PIECE for m in sent)
    assert b"".join(m["body"] for m in sent) == b"head" + body
    assert [m["more_body"] for m in sent] == [True] * (len(sent) - 1) + [False]
    assert finished == ["done"] and counted == []


async def test_a_stalled_write_ends_the_response_once() -> None:
    finished: list[str] = []
    peer, counted = Peer(stall_after=2), []
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.CancelledError):
        await run(app_sending(b"a", b"b", b"c", b"d", finished=finished), peer, counted)
    assert TIMEOUT <= loop.time() - started < TIMEOUT + 5
    assert finished == ["cancelled"] and counted == [1]
    assert [m.get("body") for m in peer.written] == [None, b"a"]


async def test_slow_writes_that_progress_are_not_ended() -> None:
    """The timeout is per write: a response longer than it in total but moving is kept."""
    finished: list[str] = []
    peer, counted = Peer(piece_seconds=TIMEOUT / 3), []
    await run(app_sending(*[b"x"] * 8, finished=finished), peer, counted)
    assert finished == ["done"] and counted == []
    assert len(peer.written) == 9


async def test_other_scopes_pass_through() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(send)

    wrapped = with_write_timeout(app, TIMEOUT, lambda: None)
    await wrapped({"type": "lifespan"}, receive, receive)
    assert seen == [receive]


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_write_timeout_must_be_positive(tmp_path: Any, value: str) -> None:
    problems = errors(tmp_path, BASE + f"service:\n  write_timeout_seconds: {value}\n",
                      load_plugins(entrypoints=False))
    assert len(problems) == 1 and problems[0].startswith("F:4: service.write_timeout_seconds: ")
