"""The `quota_handlers` section and the period grammar."""

from __future__ import annotations

import datetime as dt
from typing import Any

import lcore_quota.plugin
import pytest
from lcore_quota.config import QuotaHandlersSchema
from lcore_quota.periods import Period

from lcore_core import ConfigError
from lcore_core.app import create_app
from lcore_core.plugins import load_plugins

UTC = dt.UTC


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
       second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_upstream_section_loads_with_upstream_defaults(tmp_path: Any) -> None:
    loaded = QuotaHandlersSchema().load({
        "sqlite": {"db_path": str(tmp_path / "q.db")},
        "limiters": [
            {"name": "user_monthly_limits", "type": "user_limiter", "initial_quota": 10,
             "quota_increase": 10, "period": "2 seconds"},
            {"name": "cluster_monthly_limits", "type": "cluster_limiter",
             "initial_quota": 100, "quota_increase": 0, "period": "1 month"}],
        "scheduler": {"period": 10},
        "enable_token_history": True})
    assert loaded["scheduler"] == {"period": 10, "database_reconnection_count": 10,
                                   "database_reconnection_delay": 1}
    assert loaded["enable_token_history"] is True
    assert (loaded["reservation_tokens"], loaded["reservation_chars_per_token"]) == (1000, 4)
    assert QuotaHandlersSchema().load({})["limiters"] == []


def test_postgres_keys_are_upstream_ones() -> None:
    loaded = QuotaHandlersSchema().load({"postgres": {
        "host": "db", "port": 5433, "db": "quota", "user": "u", "password": "p",
        "ssl_mode": "require", "gss_encmode": "disable", "namespace": "quota"}})
    assert loaded["postgres"]["namespace"] == "quota"


@pytest.mark.parametrize(("limiter", "key", "message"), [
    ({"type": "team_limiter"}, "type", "Must be one of"),
    ({"initial_quota": -1}, "initial_quota", "greater than or equal to 0"),
    ({"period": "1 fortnight"}, "period", "invalid period"),
    ({"period": "0 days"}, "period", "at least 1"),
    ({"period": 0}, "period", "at least 1 second"),
    ({"colour": "red"}, "colour", "Unknown field"),
])
def test_invalid_limiter_is_refused_with_its_key(limiter: dict[str, Any], key: str,
                                                 message: str) -> None:
    base = {"name": "l", "type": "user_limiter", "initial_quota": 1, "quota_increase": 0,
            "period": "1 day"}
    with pytest.raises(Exception) as caught:
        QuotaHandlersSchema().load({"sqlite": {"db_path": "/tmp/q.db"},
                                    "limiters": [{**base, **limiter}]})
    messages = caught.value.messages  # type: ignore[attr-defined]
    assert message in str(messages["limiters"][0][key])


def test_section_level_mistakes() -> None:
    schema = QuotaHandlersSchema()
    one = {"name": "a", "type": "user_limiter", "initial_quota": 1, "quota_increase": 0,
           "period": 60}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limiters": [one]}, "limiters need a database"),
        ({"sqlite": {"db_path": "/tmp/q"}, "postgres": {"db": "d", "user": "u"}}, "only one"),
        ({"sqlite": {"db_path": "/tmp/q"}, "limiters": [one, one]}, "used twice"),
        ({"scheduler": {"period": 0}}, "greater than or equal to 1"),
    ]
    for data, message in cases:
        with pytest.raises(Exception) as caught:
            schema.load(data)
        assert message in str(caught.value), data


def test_errors_name_file_line_and_key(write_config: Any) -> None:
    path = write_config({"quota_handlers": {
        "sqlite": {"db_path": "/tmp/unused-quota.db"},
        "limiters": [{"name": "daily", "type": "user_limiter", "initial_quota": 5,
                      "quota_increase": 0, "period": "3 fortnights"}]}})
    with pytest.raises(ConfigError) as caught:
        create_app(path, plugins=load_plugins(entrypoints=False, extra=[lcore_quota.plugin]))
    text = str(caught.value)
    assert str(path) in text
    line = 1 + path.read_text().splitlines().index(
        next(ln for ln in path.read_text().splitlines() if "3 fortnights" in ln))
    assert f"{path}:{line}: quota_handlers.limiters[0].period:" in text
    assert "invalid period '3 fortnights'" in text


def test_section_needs_the_plugin(write_config: Any) -> None:
    path = write_config({"quota_handlers": {"limiters": []}})
    with pytest.raises(ConfigError, match="needs the plugin lcore-quota"):
        create_app(path, plugins=load_plugins(entrypoints=False))


# --- periods ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds", "months"), [
    ("30 seconds", 30, 0), ("1 minute", 60, 0), ("2 hours", 7200, 0), ("1 day", 86400, 0),
    ("1 week", 604800, 0), ("1 month", 0, 1), ("3 months", 0, 3), ("1 year", 0, 12),
    ("day", 86400, 0), (45, 45, 0), ("3600", 3600, 0), ("1 Day", 86400, 0),
])
def test_period_grammar(text: Any, seconds: int, months: int) -> None:
    period = Period.parse(text)
    assert (period.seconds, period.months) == (seconds, months)


def test_period_grid() -> None:
    now = at(2025, 1, 15, 12, 34, 56)  # a Wednesday
    assert Period.parse("1 day").start(now) == at(2025, 1, 15)
    assert Period.parse("1 day").next_start(now) == at(2025, 1, 16)
    assert Period.parse("30 seconds").start(now) == at(2025, 1, 15, 12, 34, 30)
    assert Period.parse("1 week").start(now) == at(2025, 1, 13)  # Monday
    assert Period.parse("1 week").next_start(now) == at(2025, 1, 20)
    assert Period.parse("1 month").start(now) == at(2025, 1, 1)
    assert Period.parse("1 month").next_start(at(2025, 12, 31, 23)) == at(2026, 1, 1)
    assert Period.parse("3 months").start(at(2025, 5, 20)) == at(2025, 4, 1)
    assert Period.parse("1 year").next_start(now) == at(2026, 1, 1)
    # The grid is the same whatever the caller's time zone.
    paris = dt.timezone(dt.timedelta(hours=1))
    assert Period.parse("1 day").start(now.astimezone(paris)) == at(2025, 1, 15)
