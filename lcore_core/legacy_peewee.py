"""peewee helpers the stores not yet on `lcore_core.storage` still use (the cache, quota and A2A
plugins). They go with the last of those stores."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

import peewee


def bind_models(database: peewee.Database, *models: type[peewee.Model]) -> list[Any]:
    """Copies of `models` bound to `database`.

    peewee's `bind_ctx` rebinds the classes process-wide, which races between threads and
    between two apps in one process; a copy per database has no shared state.
    """
    bound = []
    for model in models:
        meta = type("Meta", (), {"database": database, "table_name": model._meta.table_name})
        bound.append(type(model.__name__, (model,), {"Meta": meta, "__module__": __name__}))
    return bound


def install_schema(database: peewee.Database, tables: list[type[peewee.Model]],
                   version_model: type[peewee.Model], component: str, version: int, *,
                   namespace: str | None = None) -> None:
    """Create `tables` (and the schema `namespace` in PostgreSQL) and record `version`.

    Call it with a connection open and outside any transaction: it runs its own. Idempotent,
    and safe for replicas starting side by side. PostgreSQL's CREATE ... IF NOT EXISTS is not
    atomic (two creators collide on its catalog), so there one process at a time goes through,
    under a session advisory lock taken *before* the transaction begins: a transaction that
    began before another one's commit may still read the catalog as it was, and collide anyway.
    """
    postgres = isinstance(database, peewee.PostgresqlDatabase)
    key = (f"lcore-schema:{namespace or ''}",)
    if postgres:
        database.execute_sql("SELECT pg_advisory_lock(hashtext(%s))", key)
    try:
        with database.atomic():
            if postgres and namespace:
                quoted = '"' + namespace.replace('"', '""') + '"'
                database.execute_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            database.create_tables([*tables, version_model], safe=True)
            _add_missing_columns(database, tables, namespace if postgres else None)
            fields = version_model._meta.fields
            version_model.insert(component=component, version=version).on_conflict(
                conflict_target=[fields["component"]], update={fields["version"]: version}
            ).execute()
    finally:
        if postgres:
            database.execute_sql("SELECT pg_advisory_unlock(hashtext(%s))", key)


def _add_missing_columns(database: peewee.Database, tables: list[type[peewee.Model]],
                         schema: str | None) -> None:
    """Add the columns a newer version brought to tables an older one created (each new field
    is nullable or has a default, so existing rows stay valid)."""
    from playhouse.migrate import SchemaMigrator, migrate

    migrator = SchemaMigrator.from_database(database)
    for table in tables:
        name = table._meta.table_name
        present = {c.name for c in database.get_columns(name, schema)}
        missing = [f for f in table._meta.sorted_fields if f.column_name not in present]
        if missing:
            migrate(*(migrator.add_column(name, f.column_name, f) for f in missing))


class PreparedQuery:
    """A peewee query built once, with a marker for each named value; `params(values)` gives
    one call's parameters in the statement's order, to run with `database.execute_sql(sql,
    params)`. Building a query costs peewee 0.1-0.3 ms, more than a one-row statement takes
    the database, and it runs in a worker thread that holds the GIL.

    Every value that changes from call to call must be named: a field's default is computed at
    build time and would be kept as a constant (a datetime constant is refused for that
    reason). A value the field wraps (a JSON field's adapter) is wrapped the same way.
    """

    def __init__(self, build: Callable[..., peewee.Query], names: Iterable[str],
                 dates: Iterable[str] = ()) -> None:
        markers: dict[str, Any] = {name: f"\x00{name}\x00" for name in names}
        for second, name in enumerate(dates, 1):  # a date field's value must look like one
            markers[name] = dt.datetime(1901, 1, 1, 0, 0, second)
        self.sql, template = build(**markers).sql()
        by_marker = {marker: name for name, marker in markers.items()}
        self._slots: list[tuple[str | None, Any, Any]] = []
        for value in template:
            inner = getattr(value, "adapted", value)
            slot = by_marker.get(inner) if isinstance(inner, str | dt.datetime) else None
            if slot is None and isinstance(value, dt.datetime):
                raise ValueError(f"a date built into the query: name it ({value})")
            wrap = type(value) if slot is not None and inner is not value else None
            self._slots.append((slot, wrap, value))
        unused = set(markers) - {name for name, _, _ in self._slots}
        if unused:
            raise ValueError(f"the query does not use {sorted(unused)}")

    def params(self, values: dict[str, Any]) -> list[Any]:
        return [constant if name is None else wrap(values[name]) if wrap else values[name]
                for name, wrap, constant in self._slots]

    def run(self, database: peewee.Database, values: dict[str, Any]) -> Any:
        """Run the statement with `values` (synchronously: call it from a worker thread)."""
        return database.execute_sql(self.sql, self.params(values))
