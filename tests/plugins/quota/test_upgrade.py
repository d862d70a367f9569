"""Quota databases written by earlier LCore (peewee, before the storage service) open in
place: the tables and rows are kept, the schema version brought up to date (SQLite and
PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from lcore_core import AuthTuple, QuotaTicket, Usage

from .conftest import START, limiter, pg_connect, quota_settings

NOW = START.replace(tzinfo=None)


def _old_ddl(postgres: bool, *, origin: bool) -> list[str]:
    """The DDL peewee emitted for the quota models LCore declared (`origin`: schema version
    2)."""
    big, ts = ("BIGINT", "TIMESTAMP") if postgres else ("INTEGER", "DATETIME")
    origin_column = ', "origin" TEXT' if origin else ""
    return [
        'CREATE TABLE "lcore_quota_limit" ("limiter" TEXT NOT NULL, '
        '"subject_type" VARCHAR(1) NOT NULL, "subject_id" TEXT NOT NULL, '
        f'"quota_limit" {big} NOT NULL, "available" {big} NOT NULL, '
        f'"epoch" INTEGER NOT NULL, "reset_at" {ts} NOT NULL, "updated_at" {ts} NOT NULL, '
        f'"revoked_at" {ts}, PRIMARY KEY ("limiter", "subject_type", "subject_id"))',
        'CREATE TABLE "lcore_quota_token_usage" '
        f'("id" {"BIGSERIAL" if postgres else "INTEGER"} NOT NULL PRIMARY KEY, '
        '"user_id" TEXT NOT NULL, "provider" TEXT NOT NULL, "model" TEXT NOT NULL, '
        f'"input_tokens" {big} NOT NULL, "output_tokens" {big} NOT NULL, '
        f'"created_at" {ts} NOT NULL{origin_column})',
        'CREATE INDEX "tokenusage_user_id_created_at" ON "lcore_quota_token_usage" '
        '("user_id", "created_at")',
        'CREATE TABLE "lcore_schema_version" ("component" VARCHAR(64) NOT NULL PRIMARY KEY, '
        '"version" INTEGER NOT NULL)',
    ]


def _write_as_before(storage: dict[str, Any], statements: list[tuple[str, tuple[Any, ...]]]
                     ) -> None:
    """Run `statements` (`%s` markers) on the quota database with a connection of its own;
    times go in as peewee stored them (SQLite: `str(datetime)`)."""
    if "sqlite" in storage:
        path = Path(storage["sqlite"]["db_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for sql, params in statements:
                conn.execute(sql.replace("%s", "?"), [
                    str(p) if isinstance(p, dt.datetime) else p for p in params])
        finally:
            conn.close()
        return
    with pg_connect() as pg:
        pg.autocommit = True
        pg.execute(f'SET search_path TO "{storage["postgres"]["namespace"]}"')
        for sql, params in statements:
            pg.execute(sql, params)


@pytest.mark.parametrize("version", [1, 2])
async def test_a_database_of_the_peewee_store_opens_in_place(storage: Any, make_quota: Any,
                                                             version: int) -> None:
    _write_as_before(storage, [
        *[(sql, ()) for sql in _old_ddl("postgres" in storage, origin=version == 2)],
        ('INSERT INTO "lcore_schema_version" (component, version) VALUES (%s, %s)',
         ("quota", version)),
        ('INSERT INTO "lcore_quota_limit" (limiter, subject_type, subject_id, quota_limit, '
         "available, epoch, reset_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
         ("daily", "u", "alice", 1000, 400, 3, NOW.replace(hour=0),
          NOW - dt.timedelta(hours=1))),
        ('INSERT INTO "lcore_quota_token_usage" (user_id, provider, model, input_tokens, '
         "output_tokens, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
         ("alice", "openai", "scripted-llm", 500, 100, NOW - dt.timedelta(hours=1))),
    ])

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
