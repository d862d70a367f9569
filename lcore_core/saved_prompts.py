"""Saved prompts: each user's named prompt texts (upstream's `/v1/saved-prompts`).

They live in the user DB's database (the `database` section, SQLite or PostgreSQL), as upstream
keeps them, in a table of LCore's own (`lcore_saved_prompt`). A user sees and deletes only their
own; names are unique per user; the count per user is bounded by `saved_prompts`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lcore_core.config.schema import SAVED_PROMPTS_CEILINGS
from lcore_core.storage import Duplicate, iso
from lcore_core.tracing import traced
from lcore_core.userdb import utcnow

if TYPE_CHECKING:
    from lcore_core.storage import Database
    from lcore_core.userdb import UserDB

COMPONENT = "saved_prompts"
TABLE = "lcore_saved_prompt"
COLUMNS = ("id", "user_id", "name", "content", "created_at", "updated_at")
# A list never returns more than any configuration allows a user to keep (rows imported or
# written while a larger limit was configured stay, but are not all listed).
LIST_LIMIT = SAVED_PROMPTS_CEILINGS["max_prompts_per_user"]


def migrations(database: Database) -> list[tuple[int, list[Any]]]:
    stamp = database.timestamp
    return [(1, [
        f'CREATE TABLE IF NOT EXISTS "{TABLE}" ("id" VARCHAR(64) NOT NULL PRIMARY KEY, '
        '"user_id" VARCHAR(256) NOT NULL, "name" VARCHAR(255) NOT NULL, '
        f'"content" TEXT NOT NULL, "created_at" {stamp} NOT NULL, '
        f'"updated_at" {stamp} NOT NULL)',
        f'CREATE INDEX IF NOT EXISTS "{TABLE}_user_id" ON "{TABLE}" ("user_id")',
        f'CREATE UNIQUE INDEX IF NOT EXISTS "{TABLE}_user_id_name" ON "{TABLE}" '
        '("user_id", "name")'])]


class LimitReached(Exception):
    """The user already keeps as many saved prompts as allowed."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"Saved prompt limit exceeded: {count} existing prompts, maximum is "
                         f"{limit}")


class NameTaken(Exception):
    """The user already has a saved prompt of that name."""


class SavedPrompts:
    """The store, on the user DB's Database."""

    def __init__(self, userdb: UserDB) -> None:
        self.userdb = userdb
        self.db = userdb.db

    async def setup(self) -> None:
        """Create the table idempotently (after the user DB's own setup)."""
        await self.db.migrate(COMPONENT, migrations(self.db))

    async def installed(self) -> bool:
        """Whether the table exists (creating nothing)."""
        return await self.db.has_table(TABLE)

    @traced("lcore.storage.saved_prompts.list")
    async def list(self, user_id: str) -> list[dict[str, Any]]:
        """The user's saved prompts, newest first (at most `LIST_LIMIT`)."""
        found = await self.db.fetch(
            f'SELECT {", ".join(COLUMNS)} FROM "{TABLE}" WHERE user_id = %s '
            f"ORDER BY created_at DESC, id DESC LIMIT {int(LIST_LIMIT)}", (user_id,))
        return [as_dict(row) for row in found]

    @traced("lcore.storage.saved_prompts.create")
    async def create(self, user_id: str, name: str, content: str, *,
                     limit: int) -> dict[str, Any]:
        """Save a prompt; raises `LimitReached` when the user keeps `limit` already,
        `NameTaken` when the name is in use.

        The count and the insert are one transaction that holds the user's lock (PostgreSQL: an
        advisory lock on the user; SQLite: the write lock from the start), so concurrent
        requests, from one replica or several, cannot together go past the limit.
        """
        now = utcnow()
        row = {"id": str(uuid.uuid4()), "user_id": user_id, "name": name, "content": content,
               "created_at": now, "updated_at": now}
        try:
            async with self.db.transaction(lock=f"lcore-saved-prompts:{user_id}") as tx:
                found = await tx.fetch(f'SELECT COUNT(*) AS n FROM "{TABLE}" WHERE user_id = %s',
                                       (user_id,))
                count = int(found[0]["n"])
                if count >= limit:
                    raise LimitReached(count, limit)
                await tx.execute(f'INSERT INTO "{TABLE}" ({", ".join(COLUMNS)}) VALUES '
                                 f'({", ".join(["%s"] * len(COLUMNS))})',
                                 [row[c] for c in COLUMNS])
        except Duplicate as exc:
            raise NameTaken(name) from exc
        return as_dict(row)

    @traced("lcore.storage.saved_prompts.delete")
    async def delete(self, prompt_id: str, user_id: str) -> bool:
        """Delete the user's saved prompt; False when the user has none of that id."""
        return bool(await self.db.execute(
            f'DELETE FROM "{TABLE}" WHERE id = %s AND user_id = %s', (prompt_id, user_id)))

    async def import_rows(self, rows: Sequence[dict[str, Any]], *,
                          dry_run: bool) -> tuple[int, int]:
        """Insert `rows` unless LCore has the same id, or the user a prompt of that name:
        (imported, skipped). A prompt saved meanwhile wins (ON CONFLICT DO NOTHING)."""
        marks = ", ".join(["%s"] * len(rows))
        present = {r["id"] for r in await self.db.fetch(
            f'SELECT id FROM "{TABLE}" WHERE id IN ({marks})', [r["id"] for r in rows])}
        users = sorted({r["user_id"] for r in rows})
        named = {(r["user_id"], r["name"]) for r in await self.db.fetch(
            f'SELECT user_id, name FROM "{TABLE}" WHERE user_id IN '
            f'({", ".join(["%s"] * len(users))})', users)}
        new = [r for r in rows if r["id"] not in present and (r["user_id"], r["name"]) not in named]
        if dry_run or not new:
            return len(new), len(rows) - len(new)
        inserted = await self.db.insert_new(TABLE, COLUMNS, new)
        return inserted, len(rows) - inserted


def as_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "content": row["content"],
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}
