"""Upstream's A2A state into LCore's A2A store, for `lcore migrate --from-upstream`.

Upstream keeps `a2a_contexts` (context id -> conversation id, no user) and a2a-sdk's task
table `a2a_tasks` (id, context_id, kind, status, artifacts, history, metadata as JSON). LCore
records the user of each context and task: it is the owner of the context's conversation in
upstream's user DB. A context or task LCore already has is left as it is.
"""

from __future__ import annotations

from a2a.types import Task
from pydantic import ValidationError

from lcore_a2a.store import ContextRecord, SqlStore, TaskRecord, open_store
from lcore_core import Migration, MigrationError, StorageError

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
        owners = await _contexts(migration, store)
        if await upstream.has("a2a_tasks"):
            await _tasks(migration, store, owners)
    except StorageError as exc:
        raise MigrationError(f"LCore's A2A store: {exc.cause}") from exc
    finally:
        await store.close()


async def _contexts(migration: Migration, store: SqlStore) -> dict[str, str]:
    """Import the contexts; the user of each context of upstream's (even one LCore had)."""
    upstream = migration.upstream(SECTION)
    assert upstream is not None
    owners: dict[str, str] = {}
    if not await upstream.has("a2a_contexts"):
        return owners
    report = migration.table(SECTION, "a2a_contexts", "lcore_a2a_user_context")
    async for row in upstream.rows("a2a_contexts", ("context_id",)):
        report.found += 1
        conversation_id = migration.conversation_id(str(row.get("conversation_id") or ""))
        user_id = migration.owner(conversation_id)
        if user_id is None:
            report.skip("its conversation is not in upstream's user DB: the user is unknown")
            continue
        record = ContextRecord(str(row["context_id"]), user_id, conversation_id)
        owners[record.context_id] = user_id
        if migration.dry_run:
            added = not await store.has_context(user_id, record.context_id)
        else:
            added = await store.add_context(record)
        if added:
            report.imported += 1
        else:
            report.skip(EXISTS)
    return owners


async def _tasks(migration: Migration, store: SqlStore, owners: dict[str, str]) -> None:
    upstream = migration.upstream(SECTION)
    assert upstream is not None
    report = migration.table(SECTION, "a2a_tasks", "lcore_a2a_task")
    async for row in upstream.rows("a2a_tasks", ("id",)):
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
            added = not await store.has_task(record.task_id)
        else:
            added = await store.add_task(record, task.status.state.value)
        if added:
            report.imported += 1
        else:
            report.skip(EXISTS)
