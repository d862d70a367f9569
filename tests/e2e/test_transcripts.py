"""Transcripts (`user_data_collection.transcripts_*`): one JSON file per answered query, in
upstream's layout and fields, against the real Llama Stack in both modes."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lcore_core.app import create_app
from lcore_core.plugins import load_plugins
from lcore_core.testing.llama_stack import INFERENCE_PROVIDER_ID
from lcore_core.testing.llm import DEFAULT_LLM_MODEL

from .support import MODES, Lcore, backend_for, lcore_config, started

# noop authentication's fixed user.
USER_ID = "00000000-0000-0000-0000-000"
USER_DIR = hashlib.sha256(USER_ID.encode()).hexdigest()
FIELDS = {"metadata", "redacted_query", "query_is_valid", "llm_response", "rag_chunks",
          "truncated", "attachments", "tool_calls", "tool_results"}


@pytest.fixture(scope="module", params=MODES)
async def transcript_lcore(request: pytest.FixtureRequest,
                           tmp_path_factory: pytest.TempPathFactory, llama_stack_server: Any,
                           llama_stack_library_config: Path) -> AsyncIterator[Lcore]:
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"transcripts-{mode}")
    llama = backend_for(request, mode, llama_stack_server, llama_stack_library_config)
    collection = {"transcripts_enabled": True,
                  # Not there yet: made by the first transcript.
                  "transcripts_storage": str(workdir / "data" / "transcripts")}
    app = create_app(lcore_config(workdir, mode, llama, user_data_collection=collection),
                     plugins=load_plugins(entrypoints=False))
    async with started(app) as test_app:
        yield Lcore(app, test_app.test_client(), mode, workdir)


def storage(lcore: Lcore) -> Path:
    return Path(lcore.runtime.config.user_data_collection.transcripts_storage)


def transcripts_of(lcore: Lcore, conversation_id: str) -> list[dict[str, Any]]:
    folder = storage(lcore) / USER_DIR / conversation_id
    files = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) \
        if folder.exists() else []
    # Only finished files: the temporary ones are renamed into place or removed.
    assert all(f.suffix == ".json" and not f.name.startswith(".") for f in files), files
    return [json.loads(f.read_text()) for f in files]


async def test_a_query_writes_one_transcript(transcript_lcore: Lcore, llm: Any) -> None:
    attachment = {"attachment_type": "log", "content_type": "text/plain",
                  "content": "kernel: all quiet"}
    response = await transcript_lcore.query("what does the log say?", attachments=[attachment],
                                            generate_topic_summary=False)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body = await response.get_json()
    conversation_id = body["conversation_id"]
    (transcript,) = transcripts_of(transcript_lcore, conversation_id)
    assert set(transcript) == FIELDS
    meta = transcript["metadata"]
    assert meta["provider"] == meta["query_provider"] == INFERENCE_PROVIDER_ID
    assert meta["model"] == meta["query_model"] == DEFAULT_LLM_MODEL
    assert meta["user_id"] == USER_DIR  # hashed, never the id in clear
    assert meta["conversation_id"] == conversation_id
    assert datetime.fromisoformat(meta["timestamp"]).tzinfo is not None
    assert transcript["redacted_query"] == "what does the log say?"
    assert transcript["query_is_valid"] is True
    assert transcript["truncated"] is False
    assert transcript["llm_response"] == body["response"]
    assert transcript["llm_response"].startswith("Scripted answer to: what does the log say?")
    assert transcript["attachments"] == [attachment]
    assert transcript["tool_calls"] == body["tool_calls"]
    assert transcript["rag_chunks"] == body["rag_chunks"]

    again = await transcript_lcore.query("and now?", conversation_id=conversation_id)
    assert again.status_code == 200
    second = transcripts_of(transcript_lcore, conversation_id)
    assert [t["redacted_query"] for t in second] == ["what does the log say?", "and now?"]


async def test_a_streamed_query_writes_one_transcript(transcript_lcore: Lcore,
                                                     llm: Any) -> None:
    status, events = await transcript_lcore.stream("stream me a transcript",
                                                   generate_topic_summary=False)
    assert status == 200
    assert events[-1]["event"] == "end", events
    conversation_id = events[0]["data"]["conversation_id"]
    streamed = "".join(e["data"]["token"] for e in events if e["event"] == "token")
    (transcript,) = transcripts_of(transcript_lcore, conversation_id)
    assert transcript["llm_response"] == streamed
    assert transcript["redacted_query"] == "stream me a transcript"
    assert transcript["metadata"]["conversation_id"] == conversation_id


async def test_a_failed_query_writes_none(transcript_lcore: Lcore, llm: Any) -> None:
    llm.script("please fail", status=500, error="scripted outage")
    response = await transcript_lcore.query("please fail", generate_topic_summary=False)
    assert response.status_code >= 500
    written = [p for p in storage(transcript_lcore).rglob("*.json")
               if "please fail" in p.read_text()]
    assert written == []


async def test_a_transcript_that_cannot_be_written_does_not_fail_the_answer(
        transcript_lcore: Lcore, llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    first = await transcript_lcore.query("start a conversation", generate_topic_summary=False)
    conversation_id = (await first.get_json())["conversation_id"]
    folder = storage(transcript_lcore) / USER_DIR / conversation_id
    for old in folder.iterdir():
        old.unlink()
    folder.rmdir()
    folder.write_text("a file where the conversation's directory should be")
    with caplog.at_level(logging.ERROR, logger="lcore.transcripts"):
        answer = await transcript_lcore.query("still answered?", conversation_id=conversation_id)
        status, events = await transcript_lcore.stream("streamed too?",
                                                       conversation_id=conversation_id)
    assert answer.status_code == 200, await answer.get_data(as_text=True)
    assert (await answer.get_json())["response"].startswith("Scripted answer to: still answered?")
    assert status == 200 and events[-1]["event"] == "end", events
    failures = [r for r in caplog.records if "transcript not stored" in r.getMessage()]
    assert len(failures) == 2, [r.getMessage() for r in caplog.records]
    assert folder.read_text() == "a file where the conversation's directory should be"
    # The turns themselves were stored as usual.
    history = await transcript_lcore.client.get(f"/v1/conversations/{conversation_id}")
    assert len((await history.get_json())["chat_history"]) == 3


async def test_no_transcripts_when_disabled(lcore: Lcore, llm: Any) -> None:
    """The shared e2e apps keep none (the key is off by default)."""
    response = await lcore.query("no transcript for me", generate_topic_summary=False)
    assert response.status_code == 200
    assert not lcore.runtime.config.user_data_collection.transcripts_enabled
    assert not any(lcore.workdir.rglob(f"{USER_DIR}/*/*.json"))
