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
from functools import partial
from typing import Any

import peewee

from lcore_core import Migration, MigrationError
from lcore_quota.config import SUBJECT_TYPES
from lcore_quota.store import CLUSTER_SUBJECT, Limiter, QuotaDatabaseError, QuotaStore

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
            store.setup()
        limiters = [Limiter.from_settings(s) for s in settings["limiters"]]
        if upstream.has("quota_limits"):
            _limits(migration, store, limiters)
        if upstream.has("token_usage"):
            _usage(migration, store)
    except QuotaDatabaseError as exc:
        raise MigrationError(f"LCore's quota database {exc}") from exc
    finally:
        if store.pg is not None:
            await store.pg.close()
        store.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _exists(model: Any, where: Any) -> bool:
    return bool(model.select().where(where).exists())


def _insert_new(model: Any, values: dict[str, Any]) -> int:
    """Insert unless the key is taken (then the row LCore has wins); rows inserted."""
    return int(model.insert(values).on_conflict_ignore().as_rowcount().execute())


def _imported(U: Any, where: Any) -> tuple[int, int]:
    """Input and output tokens imported from upstream before, for one total."""
    row = U.select(peewee.fn.COALESCE(peewee.fn.SUM(U.input_tokens), 0),
                   peewee.fn.COALESCE(peewee.fn.SUM(U.output_tokens), 0)).where(where) \
        .tuples().first()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _limits(migration: Migration, store: QuotaStore, limiters: list[Limiter]) -> None:
    upstream = migration.upstream(SECTION)
    assert upstream is not None
    report = migration.table(SECTION, "quota_limits", "lcore_quota_limit")
    L = store.Limit
    for row in upstream.rows("quota_limits", ("subject", "id")):
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
            key = ((L.limiter == limiter.name) & (L.subject_type == code)
                   & (L.subject_id == subject))
            if migration.dry_run:
                added += not store.peek(partial(_exists, L, key), False)
            else:
                added += store.call(partial(_insert_new, L, values))
        if added:
            report.imported += 1
        else:
            report.skip("LCore already has this balance for each limiter (left as it is)")
    if report.found:
        report.note("upstream's revoked_at is the time of its last reset, not a revocation: it "
                    "sets the period applied (reset_at), and nothing is revoked in LCore")


def _usage(migration: Migration, store: QuotaStore) -> None:
    upstream = migration.upstream(SECTION)
    assert upstream is not None
    report = migration.table(SECTION, "token_usage", "lcore_quota_token_usage")
    U = store.Usage
    for row in upstream.rows("token_usage", ("user_id", "provider", "model")):
        report.found += 1
        try:
            created = migration.utc(row.get("updated_at")) or _now()
        except (ValueError, TypeError, OverflowError):
            report.skip("unreadable updated_at")
            continue
        key = {"user_id": str(row["user_id"]), "provider": str(row["provider"]),
               "model": str(row["model"])}
        where = ((U.user_id == key["user_id"]) & (U.provider == key["provider"])
                 & (U.model == key["model"]) & (U.origin == ORIGIN))
        done = store.peek(partial(_imported, U, where), (0, 0))
        grown = (int(row.get("input_tokens") or 0) - int(done[0]),
                 int(row.get("output_tokens") or 0) - int(done[1]))
        if grown == (0, 0):
            report.skip("already imported (upstream's total has not grown since)")
            continue
        if min(grown) < 0:
            report.skip("upstream's total is below what was imported before (left as it is)")
            continue
        if not migration.dry_run:
            values: dict[str, Any] = {**key, "input_tokens": grown[0],
                                      "output_tokens": grown[1], "created_at": created,
                                      "origin": ORIGIN}
            store.call(U.insert(values).execute)
        report.imported += 1
    if report.found:
        report.note("upstream keeps running totals per (user, provider, model): each became "
                    "one history row (origin upstream) at upstream's updated_at")
