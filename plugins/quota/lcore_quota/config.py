"""The `quota_handlers` section (upstream's keys, plus LCore's reservation estimate)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from lcore_core import PostgresSchema, SQLiteSchema
from lcore_quota.periods import Period

USER_LIMITER = "user_limiter"
CLUSTER_LIMITER = "cluster_limiter"
SUBJECT_TYPES = {USER_LIMITER: "u", CLUSTER_LIMITER: "c"}


class _Base(Schema):
    class Meta:
        unknown = RAISE


class PeriodField(fields.Field):
    """`"1 day"`, `"30 seconds"`, `"1 month"` or a number of seconds; kept as written."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            Period.parse(value)
        except (ValueError, TypeError) as exc:
            raise ValidationError(str(exc)) from exc
        return value


class LimiterSchema(_Base):
    name = fields.String(required=True, validate=validate.Length(min=1))
    type = fields.String(required=True, validate=validate.OneOf(list(SUBJECT_TYPES)))
    initial_quota = fields.Integer(required=True, validate=validate.Range(min=0))
    quota_increase = fields.Integer(required=True, validate=validate.Range(min=0))
    period = PeriodField(required=True)


class SchedulerSchema(_Base):
    period = fields.Integer(load_default=1, validate=validate.Range(min=1))
    database_reconnection_count = fields.Integer(load_default=10, validate=validate.Range(min=1))
    database_reconnection_delay = fields.Integer(load_default=1, validate=validate.Range(min=1))


def _unique_names(limiters: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for limiter in limiters:
        if limiter["name"] in seen:
            raise ValidationError(f"limiter name {limiter['name']!r} is used twice")
        seen.add(limiter["name"])


class QuotaHandlersSchema(_Base):
    """Token quotas. Exactly one of `sqlite`, `postgres` holds them when limiters are set."""

    sqlite = fields.Nested(SQLiteSchema, load_default=None, allow_none=True)
    postgres = fields.Nested(PostgresSchema, load_default=None, allow_none=True)
    limiters = fields.List(fields.Nested(LimiterSchema), load_default=list,
                           validate=_unique_names)
    scheduler = fields.Nested(SchedulerSchema, load_default=lambda: SchedulerSchema().load({}))
    enable_token_history = fields.Boolean(load_default=False)
    # LCore additions: what a query reserves before the LLM call, settled to the real usage
    # after it: `reservation_tokens` plus the query's length / `reservation_chars_per_token`
    # (0: the query's length is not counted).
    reservation_tokens = fields.Integer(load_default=1000, validate=validate.Range(min=0))
    reservation_chars_per_token = fields.Integer(load_default=4, validate=validate.Range(min=0))

    @validates_schema
    def _storage(self, data: dict[str, Any], **_: Any) -> None:
        given = [k for k in ("sqlite", "postgres") if data.get(k) is not None]
        if len(given) > 1:
            raise ValidationError("configure only one of sqlite, postgres", "postgres")
        if data.get("limiters") and not given:
            raise ValidationError("limiters need a database: give sqlite or postgres", "sqlite")
