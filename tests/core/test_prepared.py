"""`lcore_core.PreparedQuery`: a peewee query built once runs with each call's values, as the
query built for those values would."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import peewee
import pytest

from lcore_core import PreparedQuery


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Note(peewee.Model):
    key = peewee.CharField(primary_key=True)
    owner = peewee.CharField()
    text = peewee.TextField(null=True)
    hits = peewee.IntegerField(default=0)
    at = peewee.DateTimeField(default=_utcnow)


@pytest.fixture
def db(tmp_path: Path) -> Any:
    database = peewee.SqliteDatabase(str(tmp_path / "notes.db"))
    database.bind([Note])
    database.create_tables([Note])
    yield database
    database.close()


def upsert(*, key: Any, owner: Any, text: Any, at: Any) -> peewee.Query:
    return Note.insert(key=key, owner=owner, text=text, hits=1, at=at).on_conflict(
        conflict_target=[Note.key],
        update={Note.hits: Note.hits + 1, Note.text: Note.text.concat(text), Note.at: at})


def test_each_call_runs_with_its_own_values(db: Any) -> None:
    prepared = PreparedQuery(upsert, ["key", "owner", "text"], dates=["at"])
    first, second = dt.datetime(2026, 1, 1, 9), dt.datetime(2026, 1, 2, 10)
    for values in ({"key": "a", "owner": "alice", "text": "x", "at": first},
                   {"key": "b", "owner": "bob", "text": None, "at": first},
                   {"key": "a", "owner": "alice", "text": "y", "at": second}):
        db.execute_sql(prepared.sql, prepared.params(values))
    rows = {n.key: (n.owner, n.text, n.hits, n.at) for n in Note.select()}
    assert rows == {"a": ("alice", "xy", 2, second), "b": ("bob", None, 1, first)}


def test_same_statement_and_parameters_as_the_query_built_each_time(db: Any) -> None:
    prepared = PreparedQuery(upsert, ["key", "owner", "text"], dates=["at"])
    values = {"key": "k", "owner": "o", "text": "t", "at": dt.datetime(2026, 3, 4, 5, 6, 7)}
    assert (prepared.sql, prepared.params(values)) == upsert(**values).sql()


def test_a_date_left_to_a_default_is_refused(db: Any) -> None:
    def insert(*, key: Any, owner: Any) -> peewee.Query:
        return Note.insert(key=key, owner=owner)  # `at` would be frozen at build time

    with pytest.raises(ValueError, match="date built into the query"):
        PreparedQuery(insert, ["key", "owner"])


def test_a_name_the_query_does_not_use_is_refused(db: Any) -> None:
    with pytest.raises(ValueError, match="does not use"):
        PreparedQuery(lambda **v: Note.insert(key=v["key"], owner="x", at=v["at"]),
                      ["key", "owner"], dates=["at"])
