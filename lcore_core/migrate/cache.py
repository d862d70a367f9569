"""Upstream's conversation cache, read conversation by conversation, for the cache plugins.

Upstream keeps one `cache` row per turn (its key: user, conversation, `created_at`), one
`conversations` row per conversation (topic summary, last message time) and, for compaction,
`conversation_summaries`, which LCore has no counterpart for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lcore_core.cache import CacheEntry
from lcore_core.migrate.context import Migration, TableReport
from lcore_core.migrate.source import json_list, llama_conversation_id, utc

SECTION = "conversation_cache"
JSON_FIELDS = ("referenced_documents", "tool_calls", "tool_results")


@dataclass
class UpstreamConversation:
    """One conversation of upstream's cache: its turns in order, with their `created_at`;
    `listed` when upstream's `conversations` table has a row for it (counted there)."""

    user_id: str
    conversation_id: str
    listed: bool = False
    topic_summary: str | None = None
    last_message_timestamp: str = ""
    entries: list[tuple[dt.datetime | None, CacheEntry]] = field(default_factory=list)


async def upstream_conversations(migration: Migration, target: str
                                 ) -> AsyncIterator[UpstreamConversation]:
    """Every conversation of upstream's cache (none when it keeps no database).

    Counts each `cache` row found (in `migration.table(SECTION, "cache")`) and notes what does
    not carry over; `target` names LCore's tables in the report. The importer counts what it
    imports or skips.
    """
    upstream = migration.upstream(SECTION)
    if upstream is None:
        return
    await upstream.require("cache", "is this upstream's conversation_cache section?")
    entries = migration.table(SECTION, "cache", target)
    topics = migration.table(SECTION, "conversations", target)
    summaries = migration.table(SECTION, "conversation_summaries")
    summaries.found = await upstream.count("conversation_summaries")
    summaries.skip("LCore keeps no compaction summaries", summaries.found)

    # The conversations table is small (one row per conversation): held by key.
    known: dict[tuple[str, str], dict[str, Any]] = {}
    async for row in upstream.rows("conversations"):
        topics.found += 1
        known[(str(row["user_id"]), str(row["conversation_id"]))] = row
    conversation: UpstreamConversation | None = None
    key: tuple[str, str] | None = None
    async for row in upstream.rows("cache", ("user_id", "conversation_id", "created_at")):
        if (str(row["user_id"]), str(row["conversation_id"])) != key:
            if conversation is not None:
                yield _finished(conversation)
            key = (str(row["user_id"]), str(row["conversation_id"]))
            conversation = _conversation(*key, known.pop(key, None))
        assert conversation is not None
        entries.found += 1
        conversation.entries.append((_moment(row, entries), _entry(row, entries)))
    if conversation is not None:
        yield _finished(conversation)
    for (user_id, conversation_id), meta in known.items():  # a topic summary, no turns
        yield _conversation(user_id, conversation_id, meta)


def _finished(conversation: UpstreamConversation) -> UpstreamConversation:
    conversation.last_message_timestamp = conversation.entries[-1][1].completed_at
    return conversation


def _conversation(user_id: str, conversation_id: str,
                  meta: dict[str, Any] | None) -> UpstreamConversation:
    conversation = UpstreamConversation(user_id, llama_conversation_id(conversation_id))
    if meta is not None:
        conversation.listed = True
        conversation.topic_summary = meta.get("topic_summary")
        try:
            moment = utc(meta.get("last_message_timestamp"))
        except (ValueError, TypeError, OverflowError):
            moment = None
        if moment is not None:
            conversation.last_message_timestamp = moment.replace(tzinfo=dt.UTC).isoformat()
    return conversation


def _moment(row: dict[str, Any], report: TableReport) -> dt.datetime | None:
    try:
        return utc(row.get("created_at"))
    except (ValueError, TypeError, OverflowError):
        report.note("an unreadable created_at was replaced by the migration's time")
        return None


def _entry(row: dict[str, Any], report: TableReport) -> CacheEntry:
    values: dict[str, Any] = {}
    for name in JSON_FIELDS:
        try:
            values[name] = json_list(row.get(name))
        except (ValueError, TypeError):
            report.note(f"unreadable {name} JSON (upstream ignores it as well) was imported "
                        f"as []")
            values[name] = []
    return CacheEntry(
        query=str(row.get("query") or ""), response=str(row.get("response") or ""),
        provider=str(row.get("provider") or ""), model=str(row.get("model") or ""),
        started_at=str(row.get("started_at") or ""),
        completed_at=str(row.get("completed_at") or ""), **values)
