"""`lcore migrate --from-upstream FILE`: the order of the imports and what is printed."""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import TYPE_CHECKING, TextIO

from lcore_core.errors import LCoreError
from lcore_core.migrate.context import UPSTREAM_TABLES, Migration
from lcore_core.migrate.source import MigrationError
from lcore_core.migrate.userdb import import_userdb

if TYPE_CHECKING:
    from lcore_core.config import Config
    from lcore_core.plugins import Plugins

EXIT_FAILED = 1


async def migrate(migration: Migration, plugins: Plugins) -> None:
    """The user DB (the core's), then each plugin's importer; then what nobody imports."""
    await import_userdb(migration)
    claimed: set[str] = set()
    order = list(UPSTREAM_TABLES)
    importers = sorted(plugins.upstream_importers(migration.target).values(),
                       key=lambda i: order.index(i.section) if i.section in order else len(order))
    for importer in importers:
        claimed.add(importer.section)
        result = importer.run(migration)
        if inspect.isawaitable(result):
            await result
    for section, tables in UPSTREAM_TABLES.items():
        if section == "database" or section in claimed:
            continue
        upstream = migration.upstream(section)
        if upstream is None:
            continue
        for table in tables:
            if await upstream.has(table):
                report = migration.table(section, table)
                report.found = await upstream.count(table)
                report.skip(_unclaimed(section, migration.target), report.found)


async def _run(migration: Migration, plugins: Plugins) -> None:
    try:
        await migrate(migration, plugins)
    finally:
        await migration.close()


def _unclaimed(section: str, target: Config) -> str:
    if section == "conversation_cache":
        kind = (target.get("conversation_cache") or {}).get("type")
        return (f"LCore's conversation_cache is {kind!r}: nothing to keep it in (set type "
                f"sqlite or postgres)")
    if section == "quota_handlers":
        return ("LCore's quota_handlers has no limiters (or the lcore-quota plugin is not "
                "installed)")
    if section == "a2a_state":
        return ("LCore's a2a_state keeps A2A state in memory (or the lcore-a2a plugin is not "
                "installed)")
    return "no LCore store for it"


def run(source: Config, target: Config, plugins: Plugins, *, dry_run: bool = False,
        out: TextIO | None = None) -> int:
    """Run the migration and print its report; the exit status."""
    out = out or sys.stdout
    migration = Migration(source, target, dry_run=dry_run)
    print(f"lcore migrate: from upstream {source.source} into LCore {target.source}"
          + (" (dry run: nothing is written)" if dry_run else ""), file=out)
    failure = None
    try:
        asyncio.run(_run(migration, plugins))
    except MigrationError as exc:
        failure = str(exc)
    except LCoreError as exc:  # LCore's own store (StorageError): named by its cause
        failure = f"{exc.response}: {exc.cause}" if exc.cause else exc.response
    except OSError as exc:
        failure = f"{type(exc).__name__}: {str(exc).strip()}"
    _print(migration, out)
    if failure is not None:
        print(f"lcore migrate: failed: {failure}\n(what is listed above was done; running the "
              f"command again imports only what is missing)", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _print(migration: Migration, out: TextIO) -> None:
    verb = "to import" if migration.dry_run else "imported"
    for t in migration.tables:
        target = f" -> {t.target}" if t.target else ""
        skipped = sum(t.skipped.values())
        print(f"{t.section}.{t.table}{target}: {t.found} found, {t.imported} {verb}, "
              f"{skipped} skipped", file=out)
        for reason, rows in t.skipped.most_common():
            print(f"    skipped {rows}: {reason}", file=out)
        for note in t.notes:
            print(f"    note: {note}", file=out)
    imported, skipped = migration.totals()
    print(f"total: {imported} {verb}, {skipped} skipped", file=out)
