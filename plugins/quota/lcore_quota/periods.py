"""Quota periods: `"30 seconds"`, `"1 day"`, `"2 weeks"`, `"1 month"` or a number of seconds.

A period is a grid of fixed instants in UTC, the same in every replica: days start at midnight,
weeks on Monday, months on the 1st, N-unit periods count from the Unix epoch (weeks from the
first Monday after it). A limiter is reset once per grid cell, whenever its scheduler first
looks after the cell's start.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

UNITS: dict[str, tuple[int, int]] = {}  # unit -> (seconds, months); exactly one is non-zero
for _names, _value in (
    (("s", "sec", "secs", "second", "seconds"), (1, 0)),
    (("m", "min", "mins", "minute", "minutes"), (60, 0)),
    (("h", "hr", "hrs", "hour", "hours"), (3600, 0)),
    (("d", "day", "days"), (86400, 0)),
    (("w", "week", "weeks"), (7 * 86400, 0)),
    (("mon", "month", "months"), (0, 1)),
    (("y", "year", "years"), (0, 12)),
):
    UNITS.update(dict.fromkeys(_names, _value))

_PERIOD = re.compile(r"^\s*(\d+)?\s*([a-z]+)\s*$")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
WEEK_EPOCH = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # a Monday


@dataclass(frozen=True)
class Period:
    """`seconds` for fixed-length periods, else `months` for calendar months and years."""

    text: str
    seconds: int = 0
    months: int = 0

    @classmethod
    def parse(cls, value: str | int) -> Period:
        """Parse a configured period; raises ValueError with a message fit for the user."""
        if isinstance(value, bool):
            raise ValueError("a period is a number of seconds or a text such as '1 day'")
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            seconds = int(value)
            if seconds < 1:
                raise ValueError("a period must be at least 1 second")
            return cls(str(value), seconds=seconds)
        match = _PERIOD.match(value.lower()) if isinstance(value, str) else None
        if match is None or match.group(2) not in UNITS:
            raise ValueError(
                f"invalid period {value!r}: give '<number> <unit>' (unit one of seconds, "
                "minutes, hours, days, weeks, months, years) or a number of seconds")
        count = int(match.group(1) or 1)
        if count < 1:
            raise ValueError(f"invalid period {value!r}: the number must be at least 1")
        seconds, months = UNITS[match.group(2)]
        return cls(value, seconds=seconds * count, months=months * count)

    def start(self, now: dt.datetime) -> dt.datetime:
        """Start of the period that contains `now` (aware UTC)."""
        now = now.astimezone(dt.UTC)
        if self.months:
            index = (now.year * 12 + now.month - 1) // self.months * self.months
            return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)
        anchor = WEEK_EPOCH if self.seconds % (7 * 86400) == 0 else EPOCH
        elapsed = int((now - anchor).total_seconds())
        return anchor + dt.timedelta(seconds=elapsed // self.seconds * self.seconds)

    def next_start(self, now: dt.datetime) -> dt.datetime:
        """Start of the period after the one that contains `now`."""
        start = self.start(now)
        if self.months:
            index = start.year * 12 + start.month - 1 + self.months
            return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)
        return start + dt.timedelta(seconds=self.seconds)
