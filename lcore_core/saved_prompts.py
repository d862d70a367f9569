"""Saved prompts: each user's named prompt texts (upstream's `/v1/saved-prompts`).

They live in the user DB's database (the `database` section, SQLite or PostgreSQL), as upstream
keeps them, in a table of LCore's own (`lcore_saved_prompt`). A user sees and deletes only their
own; names are unique per user; the count per user is bounded by `saved_prompts`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import peewee

from lcore_core.config.schema import SAVED_PROMPTS_CEILINGS
from lcore_core.tracing import traced
from lcore_core.userdb import SchemaVersion, bind_models, install_schema, utcnow

if TYPE_CHECKING:
    from lcore_core.userdb import UserDB

SCHEMA_VERSION = 1
# A list never returns more than any configuration allows a user to keep (rows imported or
# written while a larger limit was configured stay, but are not all listed).
LIST_LIMIT = SAVED_PROMPTS_CEILINGS["max_prompts_per_user"]


class SavedPrompt(peewee.Model):
    id = peewee.CharField(primary_key=True, max_length=64)
    user_id = peewee.CharField(index=True, max_length=256)
    name = peewee.CharField(max_length=255)
    content = peewee.TextField()
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "lcore_saved_prompt"
        indexes = ((("user_id", "name"), True),)


class LimitReached(Exception):
    """The user already keeps as many saved prompts as allowed."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"Saved prompt limit exceeded: {count} existing prompts, maximum is "
                         f"{limit}")


class NameTaken(Exception):
    """The user already has a saved prompt of that name."""


class SavedPrompts:
    """The store, on the user DB's database and its worker threads."""

    def __init__(self, userdb: UserDB) -> None:
        self.userdb = userdb
        self.db = userdb.db
        self.Prompt, self.Version = bind_models(self.db, SavedPrompt, SchemaVersion)

    async def setup(self) -> None:
        """Create the table idempotently (after the user DB's own setup)."""
        await self.userdb._run(lambda: install_schema(
            self.db, [self.Prompt], self.Version, "saved_prompts", SCHEMA_VERSION,
            namespace=self.userdb._namespace()))

    async def installed(self) -> bool:
        """Whether the table exists (creating nothing)."""
        if not await self.userdb.installed():
            return False
        return bool(await self.userdb._run(lambda: self.db.table_exists(
            self.Prompt._meta.table_name,
            self.userdb._namespace() or ("public" if self.userdb.pg is not None else None))))

    @traced("lcore.storage.saved_prompts.list")
    async def list(self, user_id: str) -> list[dict[str, Any]]:
        """The user's saved prompts, newest first (at most `LIST_LIMIT`)."""
        def fetch() -> list[dict[str, Any]]:
            P = self.Prompt
            query = (P.select().where(P.user_id == user_id)
                     .order_by(P.created_at.desc(), P.id.desc()).limit(LIST_LIMIT))
            return [as_dict(row) for row in query]

        return list(await self.userdb._run(fetch))

    @traced("lcore.storage.saved_prompts.create")
    async def create(self, user_id: str, name: str, content: str, *,
                     limit: int) -> dict[str, Any]:
        """Save a prompt; raises `LimitReached` when the user keeps `limit` already,
        `NameTaken` when the name is in use.

        The count and the insert are one transaction that holds the user's lock (PostgreSQL: an
        advisory lock on the user; SQLite: the write lock from the start), so concurrent
        requests, from one replica or several, cannot together go past the limit.
        """
        def write() -> dict[str, Any]:
            P = self.Prompt
            now = utcnow()
            row = {"id": str(uuid.uuid4()), "user_id": user_id, "name": name,
                   "content": content, "created_at": now, "updated_at": now}
            try:
                with self._user_lock(user_id):
                    count = P.select().where(P.user_id == user_id).count()
                    if count >= limit:
                        raise LimitReached(count, limit)
                    P.insert(**row).execute()
            except peewee.IntegrityError as exc:
                raise NameTaken(name) from exc
            return as_dict(P(**row))

        return dict(await self.userdb._run(write))

    @contextlib.contextmanager
    def _user_lock(self, user_id: str) -> Iterator[None]:
        if isinstance(self.db, peewee.PostgresqlDatabase):
            with self.db.atomic():
                self.db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                    (f"lcore-saved-prompts:{user_id}",))
                yield
        else:
            with self.db.atomic(lock_type="IMMEDIATE"):
                yield

    @traced("lcore.storage.saved_prompts.delete")
    async def delete(self, prompt_id: str, user_id: str) -> bool:
        """Delete the user's saved prompt; False when the user has none of that id."""
        P = self.Prompt
        return bool(await self.userdb._run(
            lambda: P.delete().where((P.id == prompt_id) & (P.user_id == user_id)).execute()))


def as_dict(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "content": row.content,
            "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at)}


def _iso(value: Any) -> str:
    if isinstance(value, str):  # SQLite hands back text
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return str(value.astimezone(dt.UTC).isoformat())
