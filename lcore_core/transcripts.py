"""Transcripts: one JSON file per answered query turn, for later analysis.

On with `user_data_collection.transcripts_enabled`; the files go under `transcripts_storage` in
upstream's layout and fields, so tools that read upstream's transcripts read these:

    <transcripts_storage>/<sha256 of the user id>/<conversation id>/<uuid4>.json

Each file is written whole or not at all (a temporary file in the same directory, then
`os.replace`), in a worker thread. A transcript is a copy kept for analysis: failing to write
one is logged and never fails the answer it describes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from lcore_core.files import write_atomically

if TYPE_CHECKING:
    from lcore_core.pipeline import QueryPlan, QueryResult
    from lcore_core.runtime import Runtime

log = structlog.get_logger("lcore.transcripts")


def hashed_user_id(user_id: str) -> str:
    """The user's directory name: the user id is not written in clear."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def storage_problem(storage: str | Path) -> str | None:
    """Why transcripts cannot be written under `storage`, checked at start-up; None if they can.

    As upstream: an existing path must be a writable directory. A missing one is created at the
    first transcript, so the nearest existing parent must be a writable directory.
    """
    path = Path(storage).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{str(path)!r} is not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{str(path)!r} is not writable"
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        return f"{str(path)!r} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{str(path)!r} cannot be created: {str(parent)!r} is not writable"
    return None


def record(plan: QueryPlan, result: QueryResult) -> dict[str, Any]:
    """One turn in upstream's transcript fields."""
    return {
        "metadata": {
            "provider": plan.provider,
            "model": plan.model,
            # Upstream records the model that answered here too (not the request's fields).
            "query_provider": plan.provider,
            "query_model": plan.model,
            "user_id": hashed_user_id(plan.auth.user_id),
            "conversation_id": plan.conversation_id,
            "timestamp": datetime.now(UTC).isoformat(),
        },
        "redacted_query": plan.query,
        "query_is_valid": True,
        "llm_response": result.response,
        "rag_chunks": result.rag_chunks,
        "truncated": False,
        "attachments": plan.attachments,
        "tool_calls": result.tool_calls,
        "tool_results": result.tool_results,
    }


def _component(value: str) -> str:
    """A single path component: nothing in an id may lead out of the storage directory."""
    name = value.replace("/", "_").replace("\\", "_")
    if name in ("", ".", "..") or "\0" in name:
        raise ValueError(f"{value!r} cannot name a transcript directory")
    return name


def write(storage: str | Path, data: dict[str, Any]) -> Path:
    """Write one transcript under `storage` (directories created as needed); returns the file."""
    meta = data["metadata"]
    folder = Path(storage) / _component(meta["user_id"]) / _component(meta["conversation_id"])
    folder.mkdir(parents=True, exist_ok=True)
    return write_atomically(folder / f"{uuid.uuid4()}.json", json.dumps(data, default=str))


async def store(runtime: Runtime, plan: QueryPlan, result: QueryResult) -> None:
    """Keep the turn's transcript when transcripts are on; a failure is only logged."""
    settings = runtime.config.user_data_collection
    if not (plan.transcript and settings.transcripts_enabled):
        return
    try:
        path = await asyncio.to_thread(write, settings.transcripts_storage, record(plan, result))
    except Exception as exc:
        log.error("transcript not stored", conversation_id=plan.conversation_id,
                  error=f"{type(exc).__name__}: {exc}")
        return
    log.info("transcript stored", conversation_id=plan.conversation_id, file=path.name)
