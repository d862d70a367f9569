"""Upstream's quota tables into LCore's, for `lcore migrate --from-upstream`.

Upstream keeps one balance per subject and limiter type (`quota_limits`: id, subject `u`/`c`,
quota_limit, available, updated_at, revoked_at: the time of its last reset), shared by every
limiter of that type; LCore keeps one per limiter. Each upstream balance goes to every LCore
limiter of its type that has no row for the subject yet (a row LCore has is left as it is),
with LCore's `initial_quota` as the limit and the period containing upstream's last reset as the
period applied, so the next reset comes when LCore's period ends.

Upstream's `token_usage` holds one running total per (user, provider, model); it becomes a
history row (`origin` = upstream) holding what the total grew by since the last import, so a
second run adds nothing and a later one adds only what upstream counted meanwhile.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from lcore_core import Migration, MigrationError
from lcore_quota.config import SUBJECT_TYPES
from lcore_quota.store import (
    CLUSTER_SUBJECT,
    KEY,
    LIMIT_TABLE,
    USAGE_TABLE,
    Limiter,
    QuotaDatabaseError,
    QuotaStore,
)

SECTION = "quota_handlers"
ORIGIN = "upstream"
TYPES = {code: name for name, code in SUBJECT_TYPES.items()}


async def import_quota(migration: Migration) -> None:
    upstream = migration.upstream(SECTION)
    if upstream is None:
        return
    settings = migration.target.quota_handlers
    store = QuotaStore(settings)
    try:
        if not migration.dry_run:
            await store.setup()
        limiters = [Limiter.from_settings(s) for s in settings["limiters"]]
        if await upstream.has("quota_limits"):
            await _limits(migration, store, limiters)
        if await upstream.has("token_usage"):
            await _usage(migration, store)
    except QuotaDatabaseError as exc:
        raise MigrationError(f"LCore's quota database {exc}") from exc
    finally:
        await store.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


async def _exists(store: QuotaStore, key: tuple[str, str, str]) -> bool:
    """Whether LCore has the row (False without tables: the dry run creates nothing)."""
    if not await store.has_tables():
        return False
    return bool(await store.fetch(f'SELECT 1 AS found FROM "{LIMIT_TABLE}" WHERE {KEY}', key))


async def _insert_new(store: QuotaStore, values: dict[str, Any]) -> int:
    """Insert unless the key is taken (then the row LCore has wins); rows inserted."""
    columns = ", ".join(values)
    return await store.execute(
        f'INSERT INTO "{LIMIT_TABLE}" ({columns}) VALUES ({", ".join(["%s"] * len(values))}) '
        "ON CONFLICT (limiter, subject_type, subject_id) DO NOTHING", list(values.values()))


async def _imported(store: QuotaStore, key: dict[str, str]) -> tuple[int, int]:
    """Input and output tokens imported from upstream before, for one total."""
    if not await store.has_tables():
        return (0, 0)
    rows = await store.fetch(
        "SELECT COALESCE(SUM(input_tokens), 0) AS i, COALESCE(SUM(output_tokens), 0) AS o "
        f'FROM "{USAGE_TABLE}" WHERE user_id = %s AND provider = %s AND model = %s '
        "AND origin = %s", (key["user_id"], key["provider"], key["model"], ORIGIN))
    return (int(rows[0]["i"]), int(rows[0]["o"])) if rows else (0, 0)


async def _limits(migration: Migration, store: QuotaStore, limiters: list[Limiter]) -> None:
    upstream = migration.upstream(SECTION)
    assert upstream is not None
    report = migration.table(SECTION, "quota_limits", "lcore_quota_limit")
    async for row in upstream.rows("quota_limits", ("subject", "id")):
        report.found += 1
        code = str(row.get("subject") or "").strip()
        if code not in TYPES:
            report.skip(f"unknown subject type {code!r}")
            continue
        targets = [lim for lim in limiters if lim.subject_type == code]
        if not targets:
            report.skip(f"no {TYPES[code]} in LCore's quota_handlers.limiters")
            continue
        try:
            reset = migration.utc(row.get("revoked_at")) or migration.utc(row.get("updated_at"))
            updated = migration.utc(row.get("updated_at")) or reset or _now()
        except (ValueError, TypeError, OverflowError):
            report.skip("unreadable updated_at or revoked_at")
            continue
        if len(targets) > 1:
            report.note(f"upstream shares one balance among all its {TYPES[code]}s; it was "
                        f"given to each of LCore's ({', '.join(t.name for t in targets)})")
        available = row.get("available")
        if available is None:
            report.note("a balance without `available` was imported as the full limit")
        subject = CLUSTER_SUBJECT if code == "c" else str(row.get("id") or "")
        added = 0
        for limiter in targets:
            if row.get("quota_limit") is not None and row["quota_limit"] != limiter.initial_quota:
                report.note(f"upstream's quota_limit {row['quota_limit']} differs from the "
                            f"initial_quota {limiter.initial_quota} of LCore's limiter "
                            f"{limiter.name!r}: LCore's is kept, the balance carried over")
            values = {
                "limiter": limiter.name, "subject_type": code, "subject_id": subject,
                "quota_limit": limiter.initial_quota,
                "available": limiter.initial_quota if available is None else int(available),
                "epoch": 0, "updated_at": updated,
                "reset_at": limiter.period.start((reset or _now()).replace(tzinfo=dt.UTC))
                .replace(tzinfo=None), "revoked_at": None}
            if migration.dry_run:
                added += not await _exists(store, (limiter.name, code, subject))
            else:
                added += await _insert_new(store, values)
        if added:
            report.imported += 1
        else:
            report.skip("LCore already has this balance for each limiter (left as it is)")
    if report.found:
        report.note("upstream's revoked_at is the time of its last reset, not a revocation: it "
                    "sets the period applied (reset_at), and nothing is revoked in LCore")


async def _usage(migration: Migration, store: QuotaStore) -> None:
    upstream = migration.upstream(SECTION)
    assert upstream is not None
    report = migration.table(SECTION, "token_usage", "lcore_quota_token_usage")
    async for row in upstream.rows("token_usage", ("user_id", "provider", "model")):
        report.found += 1
        try:
            created = migration.utc(row.get("updated_at")) or _now()
        except (ValueError, TypeError, OverflowError):
            report.skip("unreadable updated_at")
            continue
        key = {"user_id": str(row["user_id"]), "provider": str(row["provider"]),
               "model": str(row["model"])}
        done = await _imported(store, key)
        grown = (int(row.get("input_tokens") or 0) - done[0],
                 int(row.get("output_tokens") or 0) - done[1])
        if grown == (0, 0):
            report.skip("already imported (upstream's total has not grown since)")
            continue
        if min(grown) < 0:
            report.skip("upstream's total is below what was imported before (left as it is)")
            continue
        if not migration.dry_run:
            await store.record({**key, "input_tokens": grown[0], "output_tokens": grown[1]},
                               created, origin=ORIGIN)
        report.imported += 1
    if report.found:
        report.note("upstream keeps running totals per (user, provider, model): each became "
                    "one history row (origin upstream) at upstream's updated_at")
