"""Upstream's A2A state into LCore's A2A store, for `lcore migrate --from-upstream`.

Upstream keeps `a2a_contexts` (context id -> conversation id, no user) and a2a-sdk's task
table `a2a_tasks` (id, context_id, kind, status, artifacts, history, metadata as JSON). LCore
records the user of each context and task: it is the owner of the context's conversation in
upstream's user DB. A context or task LCore already has is left as it is.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import peewee
from a2a.types import Task
from pydantic import ValidationError

from lcore_a2a.store import ContextRecord, SqlStore, TaskRecord, open_store
from lcore_core import Migration, MigrationError

SECTION = "a2a_state"
EXISTS = "already in LCore's A2A store (left as it is)"


async def import_a2a(migration: Migration) -> None:
    upstream = migration.upstream(SECTION)
    if upstream is None:
        return
    store = open_store(migration.target.get("a2a_state"))
    assert isinstance(store, SqlStore)  # the hook offers the importer only then
    try:
        if not migration.dry_run:
            await store.setup()
        owners = _contexts(migration, store)
        if upstream.has("a2a_tasks"):
            _tasks(migration, store, owners)
    except peewee.PeeweeException as exc:
        raise MigrationError(f"LCore's A2A store ({store.where}): {type(exc).__name__}: "
                             f"{exc}") from exc
    finally:
        await store.close()


def _exists(store: SqlStore, model: Any, where: Any) -> bool:
    """Whether the row is there; creates nothing, not even the SQLite file."""
    if isinstance(store.db, peewee.SqliteDatabase) and not Path(store.db.database).exists():
        return False
    with store.db.connection_context():
        if not store.db.table_exists(model._meta.table_name, store.namespace):
            return False
        return bool(model.select().where(where).exists())


def _insert(store: SqlStore, model: Any, values: dict[str, Any]) -> bool:
    """Insert unless the key is taken (then the row LCore has wins)."""
    with store.db.connection_context():
        return bool(model.insert(values).on_conflict_ignore().as_rowcount().execute())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _contexts(migration: Migration, store: SqlStore) -> dict[str, str]:
    """Import the contexts; the user of each context of upstream's (even one LCore had)."""
    upstream = migration.upstream(SECTION)
    assert upstream is not None
    owners: dict[str, str] = {}
    if not upstream.has("a2a_contexts"):
        return owners
    report = migration.table(SECTION, "a2a_contexts", "lcore_a2a_user_context")
    C = store.Context
    for row in upstream.rows("a2a_contexts", ("context_id",)):
        report.found += 1
        conversation_id = migration.conversation_id(str(row.get("conversation_id") or ""))
        user_id = migration.owner(conversation_id)
        if user_id is None:
            report.skip("its conversation is not in upstream's user DB: the user is unknown")
            continue
        record = ContextRecord(str(row["context_id"]), user_id, conversation_id)
        owners[record.context_id] = user_id
        if migration.dry_run:
            added = not _exists(store, C, (C.user_id == user_id)
                                & (C.context_id == record.context_id))
        else:
            added = _insert(store, C, {"context_id": record.context_id, "user_id": user_id,
                                       "conversation_id": conversation_id,
                                       "updated_at": _now()})
        if added:
            report.imported += 1
        else:
            report.skip(EXISTS)
    return owners


def _tasks(migration: Migration, store: SqlStore, owners: dict[str, str]) -> None:
    upstream = migration.upstream(SECTION)
    assert upstream is not None
    report = migration.table(SECTION, "a2a_tasks", "lcore_a2a_task")
    T = store.Task
    for row in upstream.rows("a2a_tasks", ("id",)):
        report.found += 1
        user_id = owners.get(str(row.get("context_id")))
        if user_id is None:
            report.skip("its context is not in upstream's a2a_contexts (or has no known user)")
            continue
        try:
            task = Task.model_validate({
                "id": row["id"], "context_id": row["context_id"],
                "kind": row.get("kind") or "task",
                "status": migration.json_value(row.get("status")),
                "artifacts": migration.json_value(row.get("artifacts")),
                "history": migration.json_value(row.get("history")),
                "metadata": migration.json_value(row.get("metadata"))})
        except (ValidationError, ValueError, TypeError):
            report.skip("not a readable A2A task")
            continue
        data = task.model_dump(mode="json", exclude_none=True)
        record = TaskRecord(task.id, task.context_id, user_id, data)
        if migration.dry_run:
            added = not _exists(store, T, T.task_id == record.task_id)
        else:
            added = _insert(store, T, {
                "task_id": record.task_id, "context_id": record.context_id,
                "user_id": user_id, "state": task.status.state.value,
                "task": json.dumps(data, ensure_ascii=False), "updated_at": _now()})
        if added:
            report.imported += 1
        else:
            report.skip(EXISTS)
