"""Quota databases written by earlier LCore (peewee, before the storage service) open in
place: the tables and rows are kept, the schema version brought up to date (SQLite and
PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import peewee
import pytest

from lcore_core import AuthTuple, QuotaTicket, Usage

from .conftest import PG, START, limiter, quota_settings

NOW = START.replace(tzinfo=None)


def _old_database(storage: dict[str, Any]) -> tuple[peewee.Database, str | None]:
    if "sqlite" in storage:
        path = Path(storage["sqlite"]["db_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        return peewee.SqliteDatabase(str(path)), None
    pg = storage["postgres"]
    return peewee.PostgresqlDatabase(PG["db"], host=PG["host"], port=PG["port"],
                                     user=PG["user"]), pg["namespace"]


def _old_models(database: peewee.Database, namespace: str | None, *,
                origin: bool) -> list[Any]:
    """The quota models as LCore declared them with peewee (`origin`: schema version 2)."""

    class Base(peewee.Model):
        class Meta:
            schema = namespace

    Base._meta.set_database(database)

    class QuotaLimit(Base):
        limiter = peewee.TextField()
        subject_type = peewee.CharField(max_length=1)
        subject_id = peewee.TextField()
        quota_limit = peewee.BigIntegerField()
        available = peewee.BigIntegerField()
        epoch = peewee.IntegerField(default=0)
        reset_at = peewee.DateTimeField()
        updated_at = peewee.DateTimeField()
        revoked_at = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "lcore_quota_limit"
            primary_key = peewee.CompositeKey("limiter", "subject_type", "subject_id")

    fields: dict[str, Any] = {
        "id": peewee.BigAutoField(), "user_id": peewee.TextField(),
        "provider": peewee.TextField(), "model": peewee.TextField(),
        "input_tokens": peewee.BigIntegerField(), "output_tokens": peewee.BigIntegerField(),
        "created_at": peewee.DateTimeField()}
    if origin:
        fields["origin"] = peewee.TextField(null=True)
    fields["Meta"] = type("Meta", (), {"table_name": "lcore_quota_token_usage",
                                       "indexes": ((("user_id", "created_at"), False),)})
    TokenUsage = type("TokenUsage", (Base,), fields)

    class Version(Base):
        component = peewee.CharField(primary_key=True, max_length=64)
        version = peewee.IntegerField()

        class Meta:
            table_name = "lcore_schema_version"

    return [QuotaLimit, TokenUsage, Version]


@pytest.mark.parametrize("version", [1, 2])
async def test_a_database_of_the_peewee_store_opens_in_place(storage: Any, make_quota: Any,
                                                             version: int) -> None:
    database, namespace = _old_database(storage)
    database.connect()
    try:
        limit, usage, version_model = _old_models(database, namespace, origin=version == 2)
        database.create_tables([limit, usage, version_model])
        version_model.create(component="quota", version=version)
        limit.create(limiter="daily", subject_type="u", subject_id="alice", quota_limit=1000,
                     available=400, epoch=3, reset_at=NOW.replace(hour=0),
                     updated_at=NOW - dt.timedelta(hours=1))
        usage.create(user_id="alice", provider="openai", model="scripted-llm",
                     input_tokens=500, output_tokens=100, created_at=NOW - dt.timedelta(hours=1))
    finally:
        database.close()

    quota = await make_quota(quota_settings(storage, [limiter("daily", initial=1000)],
                                            enable_token_history=True))
    assert await quota.store.db.version("quota") == 2
    assert "origin" in await _columns(quota, "lcore_quota_token_usage")
    assert await quota.status("alice") == {"daily": 400}  # the old balance, kept
    ticket = QuotaTicket(query="q", endpoint="/v1/query")
    await quota.check(AuthTuple("alice", "alice"), ticket)
    assert ticket.reservations["lcore-quota"][0].epoch == 3
    await quota.consume(AuthTuple("alice", "alice"), Usage(30, 20, "openai", "scripted-llm"),
                        ticket)
    assert await quota.status("alice") == {"daily": 350}
    [row] = await quota.store.usage_totals("alice")
    assert (row["input_tokens"], row["output_tokens"], row["calls"]) == (530, 120, 2)
    assert row["last_at"] == NOW
    assert await quota.apply_periods() == 0  # the old period is this one: no reset yet


async def _columns(quota: Any, table: str) -> set[str]:
    async with quota.store.db.transaction() as tx:
        return set(await tx.columns(table))
