"""Upstream's user DB (conversation metadata) into LCore's (`lcore_core.userdb`).

Upstream's `user_conversation` row becomes an `lcore_user_conversation` row with the same
user, topic summary, last model and provider, times and message count, kept as a Llama Stack
conversation (as upstream keeps it). A conversation LCore already has is left as it is.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from lcore_core.migrate.context import Migration, TableReport
from lcore_core.migrate.source import BATCH, llama_conversation_id, utc
from lcore_core.userdb import UserDB

SECTION = "database"
TARGET = "lcore_user_conversation"


async def import_userdb(migration: Migration) -> None:
    upstream = migration.upstream(SECTION)
    assert upstream is not None  # the user DB always has a database (SQLite by default)
    upstream.require("user_conversation", "is this upstream's database section?")
    report = migration.table(SECTION, "user_conversation", TARGET)
    target = UserDB.open(migration.target.get("database"))
    try:
        if migration.dry_run:
            installed = await target.installed()
        else:
            await target.setup()
            installed = True
        batch: list[dict[str, Any]] = []
        for row in upstream.rows("user_conversation", ("created_at", "id")):
            report.found += 1
            mapped = _conversation(row, report)
            if mapped is None:
                continue
            migration.owners[mapped["id"]] = mapped["user_id"]
            batch.append(mapped)
            if len(batch) >= BATCH:
                await _write(target, batch, report, migration.dry_run, installed)
                batch = []
        if batch:
            await _write(target, batch, report, migration.dry_run, installed)
    finally:
        await target.close()
    if report.found:
        report.note("conversations are kept as Llama Stack conversations; their ids get "
                    "Llama Stack's conv_ prefix, which upstream strips")

    turns = migration.table(SECTION, "user_turn")
    turns.found = upstream.count("user_turn")
    turns.skip("LCore keeps no per-turn metadata (each turn's times, model and response id); "
               "the turns themselves are in Llama Stack and the conversation cache",
               turns.found)
    if upstream.has("saved_prompt"):
        prompts = migration.table(SECTION, "saved_prompt")
        prompts.found = upstream.count("saved_prompt")
        prompts.skip("LCore has no saved prompts", prompts.found)


def _conversation(row: dict[str, Any], report: TableReport) -> dict[str, Any] | None:
    """LCore's row for upstream's `row`, or None (counted as skipped) when it cannot be read."""
    if not row.get("id") or not row.get("user_id"):
        report.skip("no conversation id or user id")
        return None
    try:
        created = utc(row.get("created_at"))
        last = utc(row.get("last_message_at"))
    except (ValueError, TypeError, OverflowError):
        report.skip("unreadable created_at or last_message_at")
        return None
    if created is None:
        report.note("a conversation without created_at got its last message time (or the "
                    "migration's time)")
        created = last or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if row.get("last_response_id"):
        report.note("last_response_id has no LCore counterpart (Llama Stack's conversation "
                    "holds the turns); not imported")
    return {"id": llama_conversation_id(str(row["id"])), "user_id": str(row["user_id"]),
            "topic_summary": row.get("topic_summary"),
            "last_used_model": row.get("last_used_model") or "",
            "last_used_provider": row.get("last_used_provider") or "",
            "created_at": created, "last_message_at": last or created,
            "message_count": int(row.get("message_count") or 0), "response_ids": None}


async def _write(target: UserDB, batch: list[dict[str, Any]], report: TableReport,
                 dry_run: bool, installed: bool) -> None:
    C = target.Conversation

    def write() -> None:
        ids = [row["id"] for row in batch]
        present = {r.id for r in C.select(C.id).where(C.id.in_(ids))}
        new = [row for row in batch if row["id"] not in present]
        report.skip("already in LCore's user DB (left as it is)", len(batch) - len(new))
        if dry_run or not new:
            report.imported += len(new)
            return
        with target.db.atomic():
            # ON CONFLICT DO NOTHING: a row LCore wrote meanwhile wins, and is counted skipped.
            inserted = C.insert_many(new).on_conflict_ignore().as_rowcount().execute()
        report.imported += inserted
        report.skip("already in LCore's user DB (left as it is)", len(new) - inserted)

    if installed:
        await target._run(write)
    else:  # a dry run before LCore's user DB exists: everything is new, nothing is opened
        report.imported += len(batch)
