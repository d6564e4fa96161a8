"""Schedule expressions as EventBridge reads them: `rate(...)`, AWS's six-field `cron(...)`, plain cron.

`parse(expression, timezone)` checks an expression (the error names the part that is wrong) and
returns a `Schedule` whose `next_after(moment)` gives the next fire time in UTC. Daylight saving
follows EventBridge Scheduler: a local time that does not exist (the spring gap) is skipped, and a
local time that happens twice (the autumn repeat) fires once, at its first occurrence.

Rates are aligned to the Unix epoch (rate(5 minutes) fires at :00, :05, ...), so every scheduler
replica computes the same fire times. `rate(N seconds)` is Lambent's extension for development.

Pure (stdlib only), so the spec checks an expression at deploy, and the scheduler and `GET /schedules` compute
fire times, all from here.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = timezone.utc
_MONTHS = {name: number for number, name in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1)}
_AWS_DAYS = {name: number for number, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], start=1)}
_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_SEARCH_DAYS = 366 * 8     # a cron that matches nothing within eight years (e.g. 30 FEB) has no next time


class ScheduleError(ValueError):
    """An expression or time zone that cannot be scheduled; the message says which part is wrong."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone '{name}': use an IANA name such as UTC or Europe/Paris") from None


@dataclass(frozen=True)
class Rate:
    seconds: int

    def next_after(self, moment: datetime) -> datetime | None:
        epoch = int(moment.timestamp())
        return datetime.fromtimestamp((epoch // self.seconds + 1) * self.seconds, tz=UTC)


@dataclass(frozen=True)
class _DayRule:
    """The day part of a cron: which days of a month match."""
    days_of_month: frozenset[int] | None        # None: any
    last_day: bool = False                      # L
    nearest_weekday: int | None = None          # 15W
    last_weekday: bool = False                  # LW
    weekdays: frozenset[int] | None = None      # Python weekday numbers, Monday 0; None: any
    nth_weekday: tuple[int, int] | None = None  # (weekday, n) for 3#2
    last_of_weekday: int | None = None          # 5L: the last Thursday
    either: bool = False                        # plain cron: day-of-month OR day-of-week when both are set

    def matches(self, day: date) -> bool:
        month_rule = self._month_matches(day)
        week_rule = self._week_matches(day)
        if self.either:
            return month_rule or week_rule
        return month_rule and week_rule

    def _month_matches(self, day: date) -> bool:
        last = calendar.monthrange(day.year, day.month)[1]
        if self.last_day:
            return day.day == last
        if self.last_weekday:
            return day == _nearest_weekday(date(day.year, day.month, last))
        if self.nearest_weekday is not None:
            if self.nearest_weekday > last:
                return False
            return day == _nearest_weekday(date(day.year, day.month, self.nearest_weekday))
        return self.days_of_month is None or day.day in self.days_of_month

    def _week_matches(self, day: date) -> bool:
        if self.nth_weekday is not None:
            weekday, n = self.nth_weekday
            return day.weekday() == weekday and (day.day - 1) // 7 + 1 == n
        if self.last_of_weekday is not None:
            last = calendar.monthrange(day.year, day.month)[1]
            return day.weekday() == self.last_of_weekday and day.day + 7 > last
        return self.weekdays is None or day.weekday() in self.weekdays


def _nearest_weekday(day: date) -> date:
    """EventBridge's W: the weekday nearest to `day`, never crossing into another month."""
    if day.weekday() == 5:       # Saturday: Friday before, or Monday after when the 1st is a Saturday
        return day - timedelta(days=1) if day.day > 1 else day + timedelta(days=2)
    if day.weekday() == 6:       # Sunday: Monday after, or Friday before when it is the month's last day
        last = calendar.monthrange(day.year, day.month)[1]
        return day + timedelta(days=1) if day.day < last else day - timedelta(days=2)
    return day


@dataclass(frozen=True)
class Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    years: frozenset[int] | None
    days: _DayRule
    tz: ZoneInfo

    def next_after(self, moment: datetime) -> datetime | None:
        local = moment.astimezone(self.tz)
        day = local.date()
        for _ in range(_SEARCH_DAYS):
            if self.years is not None and day.year not in self.years:
                later = [year for year in self.years if year > day.year]   # jump to the next listed year, so
                if not later:                                               # cron(... 2040) is found from 2026
                    return None
                day = date(min(later), 1, 1)
            if (self.years is None or day.year in self.years) and day.month in self.months and self.days.matches(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        wall = datetime.combine(day, time(hour, minute), tzinfo=self.tz)   # fold=0: first of a repeat
                        if not _exists(wall):
                            continue                                                      # the spring gap: skipped
                        candidate = wall.astimezone(UTC)
                        if candidate > moment:
                            return candidate
            day += timedelta(days=1)
            if self.years is not None and day.year > max(self.years):
                return None
        return None


def _exists(wall: datetime) -> bool:
    """False for a wall-clock time inside a daylight-saving gap."""
    return wall.astimezone(UTC).astimezone(wall.tzinfo).replace(tzinfo=None) == wall.replace(tzinfo=None)


Schedule = Rate | Cron


def parse(expression: str, timezone_name: str = "UTC") -> Schedule:
    text = expression.strip()
    tz = zone(timezone_name)
    if text.startswith("rate(") and text.endswith(")"):
        return _rate(text[5:-1], expression)
    if text.startswith("cron(") and text.endswith(")"):
        return _aws_cron(text[5:-1], expression, tz)
    fields = text.split()
    if len(fields) == 5:
        return _plain_cron(fields, expression, tz)
    raise ScheduleError(f"'{expression}': use rate(value unit), cron(minutes hours day-of-month month day-of-week "
                        "year), or a five-field cron")


def _rate(body: str, expression: str) -> Rate:
    match = re.fullmatch(r"\s*(\d+)\s+([a-z]+)\s*", body)
    if match is None:
        raise ScheduleError(f"'{expression}': a rate is rate(value unit), for example rate(5 minutes)")
    value, unit = int(match.group(1)), match.group(2)
    singular = unit[:-1] if unit.endswith("s") else unit
    if singular not in _RATE_UNITS:
        raise ScheduleError(f"'{expression}': unit '{unit}' is not one of minute(s), hour(s), day(s) "
                            "(or second(s), Lambent's extension for development)")
    if value <= 0:
        raise ScheduleError(f"'{expression}': the value must be a positive whole number")
    if value == 1 and unit != singular:
        raise ScheduleError(f"'{expression}': a value of 1 takes the singular unit '{singular}'")
    if value > 1 and unit == singular:
        raise ScheduleError(f"'{expression}': a value above 1 takes the plural unit '{singular}s'")
    return Rate(value * _RATE_UNITS[singular])


def _values(field: str, name: str, low: int, high: int, names: dict[str, int] | None = None,
            expression: str = "") -> set[int]:
    """`*`, `5`, `1-5`, `JAN-MAR`, `0/15`, `*/10`, `1-30/5` and lists of them."""
    result: set[int] = set()
    for part in field.split(","):
        step = 1
        stepped = "/" in part
        if stepped:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"'{expression}': {name}: '{step_text}' is not a positive step")
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            first, last = part.split("-", 1)
            start, end = _number(first, name, low, high, names, expression), _number(last, name, low, high, names,
                                                                                      expression)
            if start > end:
                raise ScheduleError(f"'{expression}': {name}: the range {part} runs backwards")
        else:
            start = _number(part, name, low, high, names, expression)
            end = high if stepped else start
        result.update(range(start, end + 1, step))
    return result


def _number(text: str, name: str, low: int, high: int, names: dict[str, int] | None, expression: str) -> int:
    upper = text.upper()
    if names and upper in names:
        return names[upper]
    if not text.isdigit():
        raise ScheduleError(f"'{expression}': {name}: '{text}' is not a number"
                            + (f" or a name ({', '.join(names)})" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise ScheduleError(f"'{expression}': {name}: {value} is outside {low}-{high}")
    return value


def _aws_cron(body: str, expression: str, tz: ZoneInfo) -> Cron:
    fields = body.split()
    if len(fields) != 6:
        raise ScheduleError(f"'{expression}': cron() takes six fields: minutes hours day-of-month month "
                            f"day-of-week year (got {len(fields)})")
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ScheduleError(f"'{expression}': exactly one of day-of-month and day-of-week must be '?'")
    day_rule = _DayRule(days_of_month=None)
    if dom != "?":
        day_rule = _aws_day_of_month(dom, expression)
    else:
        day_rule = _aws_day_of_week(dow, expression)
    years = None if year == "*" else frozenset(_values(year, "year", 1970, 2199, expression=expression))
    return Cron(minutes=tuple(sorted(_values(minute, "minutes", 0, 59, expression=expression))),
                hours=tuple(sorted(_values(hour, "hours", 0, 23, expression=expression))),
                months=frozenset(_values(month, "month", 1, 12, _MONTHS, expression)), years=years, days=day_rule,
                tz=tz)


def _aws_day_of_month(field: str, expression: str) -> _DayRule:
    if field == "L":
        return _DayRule(days_of_month=None, last_day=True)
    if field == "LW":
        return _DayRule(days_of_month=None, last_weekday=True)
    if field.endswith("W"):
        day = _number(field[:-1], "day-of-month", 1, 31, None, expression)
        return _DayRule(days_of_month=None, nearest_weekday=day)
    if field == "*":
        return _DayRule(days_of_month=None)
    return _DayRule(days_of_month=frozenset(_values(field, "day-of-month", 1, 31, expression=expression)))


def _aws_weekday(text: str, expression: str) -> int:
    """AWS numbers days 1 (SUN) to 7 (SAT); Python's weekday() is 0 (MON) to 6 (SUN)."""
    return (_number(text, "day-of-week", 1, 7, _AWS_DAYS, expression) + 5) % 7


def _aws_day_of_week(field: str, expression: str) -> _DayRule:
    if "#" in field:
        day, nth = field.split("#", 1)
        if not nth.isdigit() or not 1 <= int(nth) <= 5:
            raise ScheduleError(f"'{expression}': day-of-week: '#{nth}' must be #1 to #5")
        return _DayRule(days_of_month=None, nth_weekday=(_aws_weekday(day, expression), int(nth)))
    if field == "L":
        return _DayRule(days_of_month=None, weekdays=frozenset({5}))     # L alone: the last day of the week, SAT
    if field.endswith("L"):
        return _DayRule(days_of_month=None, last_of_weekday=_aws_weekday(field[:-1], expression))
    if field == "*":
        return _DayRule(days_of_month=None)
    aws_days = _values(field, "day-of-week", 1, 7, _AWS_DAYS, expression)
    return _DayRule(days_of_month=None, weekdays=frozenset((day + 5) % 7 for day in aws_days))


def _plain_cron(fields: list[str], expression: str, tz: ZoneInfo) -> Cron:
    minute, hour, dom, month, dow = fields
    names = {**{name: number - 1 for name, number in _AWS_DAYS.items()}}      # SUN 0 .. SAT 6
    week = _values(dow, "day-of-week", 0, 7, names, expression)
    weekdays = frozenset((day + 6) % 7 for day in week)                        # cron 0/7 SUN -> Python 6
    days = None if dom == "*" else frozenset(_values(dom, "day-of-month", 1, 31, expression=expression))
    day_rule = _DayRule(days_of_month=days, weekdays=None if dow == "*" else weekdays,
                        # Vixie cron: when both day fields are restricted, either matches; a field that
                        # starts with '*' (such as */2) does not count as restricted.
                        either=not dom.startswith("*") and not dow.startswith("*"))
    return Cron(minutes=tuple(sorted(_values(minute, "minutes", 0, 59, expression=expression))),
                hours=tuple(sorted(_values(hour, "hours", 0, 23, expression=expression))),
                months=frozenset(_values(month, "month", 1, 12, _MONTHS, expression)), years=None, days=day_rule,
                tz=tz)


def next_times(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    times: list[datetime] = []
    moment: datetime | None = after
    while len(times) < count and moment is not None:
        moment = schedule.next_after(moment)
        if moment is not None:
            times.append(moment)
    return times
