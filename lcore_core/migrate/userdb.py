"""Upstream's user DB (conversation metadata, saved prompts) into LCore's (`lcore_core.userdb`,
`lcore_core.saved_prompts`).

Upstream's `user_conversation` row becomes an `lcore_user_conversation` row with the same
user, topic summary, last model and provider, times and message count, kept as a Llama Stack
conversation (as upstream keeps it). A `saved_prompt` row becomes an `lcore_saved_prompt` row.
A conversation or prompt LCore already has is left as it is.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from lcore_core.migrate.context import Migration, TableReport
from lcore_core.migrate.source import BATCH, UpstreamDatabase, llama_conversation_id, utc
from lcore_core.saved_prompts import SavedPrompts
from lcore_core.userdb import UserDB

SECTION = "database"
TARGET = "lcore_user_conversation"
PROMPTS_TARGET = "lcore_saved_prompt"
NAME_COLUMN = 255


async def import_userdb(migration: Migration) -> None:
    upstream = migration.upstream(SECTION)
    assert upstream is not None  # the user DB always has a database (SQLite by default)
    await upstream.require("user_conversation", "is this upstream's database section?")
    report = migration.table(SECTION, "user_conversation", TARGET)
    target = UserDB.open(migration.target.get("database"))
    try:
        if migration.dry_run:
            installed = await target.installed()
        else:
            await target.setup()
            installed = True
        batch: list[dict[str, Any]] = []
        async for row in upstream.rows("user_conversation", ("created_at", "id")):
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
    turns.found = await upstream.count("user_turn")
    turns.skip("LCore keeps no per-turn metadata (each turn's times, model and response id); "
               "the turns themselves are in Llama Stack and the conversation cache",
               turns.found)
    if await upstream.has("saved_prompt"):
        await import_saved_prompts(migration, upstream)


async def import_saved_prompts(migration: Migration, upstream: UpstreamDatabase) -> None:
    """Upstream's `saved_prompt` rows into `lcore_saved_prompt`, with their ids, users, names,
    contents and times. A prompt LCore has (the same id, or the same user and name) is left as
    it is."""
    report = migration.table(SECTION, "saved_prompt", PROMPTS_TARGET)
    userdb = UserDB.open(migration.target.get("database"))
    store = SavedPrompts(userdb)
    try:
        if migration.dry_run:
            installed = await store.installed()
        else:
            await userdb.setup()
            await store.setup()
            installed = True
        batch: list[dict[str, Any]] = []
        async for row in upstream.rows("saved_prompt", ("created_at", "id")):
            report.found += 1
            mapped = _saved_prompt(row, report)
            if mapped is None:
                continue
            batch.append(mapped)
            if len(batch) >= BATCH:
                await _write_prompts(store, batch, report, migration.dry_run, installed)
                batch = []
        if batch:
            await _write_prompts(store, batch, report, migration.dry_run, installed)
    finally:
        await userdb.close()


def _saved_prompt(row: dict[str, Any], report: TableReport) -> dict[str, Any] | None:
    if not row.get("id") or not row.get("user_id") or not row.get("name"):
        report.skip("no id, user id or name")
        return None
    if len(str(row["name"])) > NAME_COLUMN:
        report.skip(f"a name longer than {NAME_COLUMN} characters")
        return None
    try:
        created = utc(row.get("created_at"))
        updated = utc(row.get("updated_at"))
    except (ValueError, TypeError, OverflowError):
        report.skip("unreadable created_at or updated_at")
        return None
    created = created or updated or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return {"id": str(row["id"]), "user_id": str(row["user_id"]), "name": str(row["name"]),
            "content": str(row.get("content") or ""), "created_at": created,
            "updated_at": updated or created}


async def _write_prompts(store: SavedPrompts, batch: list[dict[str, Any]], report: TableReport,
                         dry_run: bool, installed: bool) -> None:
    if not installed:  # a dry run before LCore's table exists: everything is new
        report.imported += len(batch)
        return
    imported, skipped = await store.import_rows(batch, dry_run=dry_run)
    report.imported += imported
    report.skip("already in LCore's saved prompts (the same id, or the user has a prompt of "
                "that name; left as it is)", skipped)


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
    if not installed:  # a dry run before LCore's user DB exists: everything is new
        report.imported += len(batch)
        return
    imported, skipped = await target.import_rows(batch, dry_run=dry_run)
    report.imported += imported
    report.skip("already in LCore's user DB (left as it is)", skipped)
