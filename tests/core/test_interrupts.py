"""Live streams: who may stop one, and how a stop reaches a stream parked on Llama Stack."""

from __future__ import annotations

import asyncio

import pytest

from lcore_core.interrupts import LiveStreams, Outcome, close_markdown


def test_owner_only_and_forgotten_when_closed() -> None:
    streams = LiveStreams()
    live = streams.open("ann")
    assert len(streams) == 1
    assert streams.interrupt(live.request_id, "bob") is Outcome.FORBIDDEN
    assert not live.interrupted
    assert streams.interrupt("no-such-id", "ann") is Outcome.NOT_FOUND
    assert streams.interrupt(live.request_id, "ann") is Outcome.INTERRUPTED
    assert live.interrupted
    streams.close(live)
    assert len(streams) == 0
    # An interrupt racing the stream's end: "already done" for its owner, still refused to others.
    assert streams.interrupt(live.request_id, "ann") is Outcome.ALREADY_DONE
    assert streams.interrupt(live.request_id, "bob") is Outcome.FORBIDDEN


def test_finished_ids_are_bounded() -> None:
    streams = LiveStreams(finished_kept=2)
    ended = [streams.open("ann") for _ in range(3)]
    for live in ended:
        streams.close(live)
    # Only the last two are remembered; the first is forgotten (not found).
    assert streams.interrupt(ended[0].request_id, "ann") is Outcome.NOT_FOUND
    assert [streams.interrupt(live.request_id, "ann") for live in ended[1:]] == [
        Outcome.ALREADY_DONE, Outcome.ALREADY_DONE]


def test_bounded() -> None:
    streams = LiveStreams(limit=2)
    kept = [streams.open("ann"), streams.open("ann")]
    extra = streams.open("ann")
    assert len(streams) == 2
    # Past the bound a stream still gets an id, but cannot be interrupted.
    assert streams.interrupt(extra.request_id, "ann") is Outcome.NOT_FOUND
    for live in kept:
        streams.close(live)
    streams.close(extra)
    assert len(streams) == 0
    # Never tracked, so never remembered either.
    assert streams.interrupt(extra.request_id, "ann") is Outcome.NOT_FOUND


async def test_stop_wakes_a_stream_waiting_on_the_model() -> None:
    streams = LiveStreams()
    live = streams.open("ann")
    never = asyncio.get_running_loop().create_future()

    async def stream() -> str:
        live.waiting = asyncio.current_task()
        try:
            await never
        except asyncio.CancelledError:
            if not live.caught():
                raise
            return "stopped cleanly"
        finally:
            live.waiting = None
        return "not reached"

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)
    streams.interrupt(live.request_id, "ann")
    assert await task == "stopped cleanly"
    assert not task.cancelled() and task.cancelling() == 0


async def test_a_foreign_cancellation_is_not_swallowed() -> None:
    streams = LiveStreams()
    live = streams.open("ann")
    never = asyncio.get_running_loop().create_future()

    async def stream() -> None:
        live.waiting = asyncio.current_task()
        try:
            await never
        except asyncio.CancelledError:
            if not live.caught():
                raise

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)
    task.cancel()  # the client went away: not an interrupt
    with pytest.raises(asyncio.CancelledError):
        await task


def test_close_markdown() -> None:
    assert close_markdown("plain text") == ""
    assert close_markdown("```python\nprint(1)") == "\n```"
    assert close_markdown("```a```") == ""
