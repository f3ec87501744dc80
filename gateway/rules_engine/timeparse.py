"""Small parsers for the rule files: durations, rate limits, times of day, time windows and cron lines.

Every parser raises :class:`ValueError` with a sentence a rule author can act on; the loader adds the
file, line and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|min|s|m|h|d)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|min|s|m|h|d))+$")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()


def duration_ms(value: object) -> int:
    """``"2m"``, ``"1h30m"``, ``"500ms"``, ``"1.5s"`` or a number of seconds -> milliseconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"30s\", \"2m\" or \"1h\"")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return round(value * 1000)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as \"30s\", \"2m\" or \"1h\", got {type(value).__name__}")
    text = value.strip().replace(" ", "")
    if not _DURATION.match(text):
        raise ValueError(f"{value!r} is not a duration (use e.g. \"500ms\", \"30s\", \"2m\", \"1h30m\", \"1d\")")
    return round(sum(float(n) * _UNIT_MS[u] for n, u in _PART.findall(text)))


def rate_limit(value: object) -> tuple[int, int]:
    """``"10/h"``, ``"3/10m"`` -> (count, period in ms)."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("expected a rate limit such as \"10/h\" or \"3/10m\"")
    count_s, period_s = value.split("/", 1)
    try:
        count = int(count_s.strip())
    except ValueError:
        raise ValueError(f"{value!r}: the count before '/' must be an integer") from None
    if count < 1:
        raise ValueError(f"{value!r}: the count must be at least 1")
    period_s = period_s.strip()
    period = duration_ms("1" + period_s if period_s in _UNIT_MS else period_s)
    if period <= 0:
        raise ValueError(f"{value!r}: the period must be positive")
    return count, period


def minute_of_day(value: object) -> int:
    """``"07:30"`` -> 450."""
    if not isinstance(value, str):
        raise ValueError("expected a time of day \"HH:MM\"")
    m = _HHMM.match(value.strip())
    if m is None:
        raise ValueError(f"{value!r} is not a time of day \"HH:MM\" (00:00..23:59)")
    return int(m.group(1)) * 60 + int(m.group(2))


def window(value: object) -> tuple[int, int]:
    """``"22:00-06:00"`` -> (start minute, end minute); the end is exclusive and may wrap past midnight."""
    if not isinstance(value, str) or "-" not in value:
        raise ValueError("expected a time window \"HH:MM-HH:MM\"")
    a, b = value.split("-", 1)
    start, end = minute_of_day(a), minute_of_day(b)
    if start == end:
        raise ValueError(f"{value!r}: an empty window (start = end)")
    return start, end


def in_window(minute: int, w: tuple[int, int]) -> bool:
    start, end = w
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def day_index(value: object) -> int:
    if not isinstance(value, str) or value.strip().lower()[:3] not in DAYS:
        raise ValueError(f"{value!r} is not a day ({', '.join(DAYS)})")
    return DAYS.index(value.strip().lower()[:3])


@dataclass(frozen=True, slots=True)
class Cron:
    """A five-field cron line (minute hour day-of-month month day-of-week), classic semantics: when both
    day fields are restricted, either may match. Supports ``*``, ``*/n``, ``a-b``, ``a-b/n`` and lists;
    day-of-week 0..7 (0 and 7 are Sunday) or mon..sun."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    mdays: frozenset[int]
    months: frozenset[int]
    wdays: frozenset[int]  # 0 = Monday (datetime.weekday())
    mday_any: bool
    wday_any: bool

    def matches(self, minute: int, hour: int, mday: int, month: int, weekday: int) -> bool:
        if minute not in self.minutes or hour not in self.hours or month not in self.months:
            return False
        if self.mday_any and self.wday_any:
            return True
        if self.mday_any:
            return weekday in self.wdays
        if self.wday_any:
            return mday in self.mdays
        return mday in self.mdays or weekday in self.wdays


def _cron_field(text: str, lo: int, hi: int, what: str, names: tuple[str, ...] = ()) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_s = part.split("/", 1)
            if not step_s.isdigit() or int(step_s) < 1:
                raise ValueError(f"{what}: bad step {step_s!r}")
            step = int(step_s)
        if part == "*":
            a, b = lo, hi
        else:
            ends = part.split("-", 1)
            vals: list[int] = []
            for e in ends:
                e = e.strip().lower()
                if e[:3] in names:
                    vals.append(names.index(e[:3]) + lo)
                elif e.isdigit():
                    vals.append(int(e))
                else:
                    raise ValueError(f"{what}: {e!r} is not a number")
            a = vals[0]
            b = vals[-1] if len(vals) > 1 else (hi if step > 1 else a)
        if not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise ValueError(f"{what}: {part!r} is outside {lo}..{hi}")
        out.update(range(a, b + 1, step))
    return out


def cron(value: object) -> Cron:
    if not isinstance(value, str):
        raise ValueError("expected a cron line such as \"*/15 * * * *\"")
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(f"{value!r}: a cron line has 5 fields (minute hour day month weekday)")
    minutes = _cron_field(fields[0], 0, 59, "minute")
    hours = _cron_field(fields[1], 0, 23, "hour")
    mdays = _cron_field(fields[2], 1, 31, "day of month")
    months = _cron_field(fields[3], 1, 12, "month")
    # cron: 0 or 7 = Sunday, 1 = Monday; names mon..sun
    sun_first = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
    raw = _cron_field(fields[4], 0, 7, "day of week", sun_first)
    wdays = {(d - 1) % 7 for d in raw}  # -> Monday = 0 ... Sunday = 6
    return Cron(value, frozenset(minutes), frozenset(hours), frozenset(mdays), frozenset(months), frozenset(wdays),
                fields[2] == "*", fields[4] == "*")
