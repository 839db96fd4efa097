"""EventBridge Scheduler expressions: `rate(...)` and `cron(...)`, checked and evaluated.

CloudFormation accepts any string as the `ScheduleExpression` of an `AWS::Scheduler::Schedule`
and cfn-lint does not look inside it, so a typo would only surface halfway through a stack
update. `parse_schedule` refuses what EventBridge refuses, before anything is deployed, and the
parsed forms compute fire times (`next_after`) for a local stand-in of the scheduler.

The rules are EventBridge's, which are not Unix cron's:

- `rate(value unit)`: a positive whole `value`; `unit` is minute, hour or day, singular when
  the value is 1 and plural otherwise (`rate(1 hour)`, `rate(5 minutes)`).
- `cron(minutes hours day-of-month month day-of-week year)`: six fields, always.
  Minutes 0-59, hours 0-23, day-of-month 1-31, month 1-12 or JAN-DEC, day-of-week 1-7 or
  SUN-SAT (1 is Sunday), year 1970-2199. Every field takes `*`, lists `a,b`, ranges `a-b`
  and increments `a/n` or `*/n`. Exactly one of day-of-month and day-of-week is `?` (no
  value). Day-of-month also takes `L` (last day), `LW` and `nW` (the weekday nearest day n,
  within the month); day-of-week takes `L` (Saturday), `nL` (last weekday n of the month)
  and `n#k` (the k-th weekday n of the month).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Callable

import attrs

__all__ = ["Cron", "Rate", "ScheduleError", "parse_cron", "parse_rate", "parse_schedule"]


class ScheduleError(ValueError):
    """The expression is not one EventBridge Scheduler accepts; the message says why."""


# -- rate ---------------------------------------------------------------------------------

_RATE = re.compile(r"rate\((?P<value>\S+) (?P<unit>\S+)\)")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


@attrs.frozen
class Rate:
    """`rate(value unit)`: fires every `interval`, counted from the schedule's start."""

    value: int
    unit: str  # "minute", "hour" or "day"

    @property
    def interval(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.value * _UNIT_SECONDS[self.unit])

    def next_after(self, after: dt.datetime, start: dt.datetime) -> dt.datetime:
        """The first fire time strictly after `after` of a schedule that began at `start`."""
        if after < start:
            return start
        elapsed = after - start
        return start + (elapsed // self.interval + 1) * self.interval

    def __str__(self) -> str:
        unit = self.unit if self.value == 1 else self.unit + "s"
        return f"rate({self.value} {unit})"


def parse_rate(expression: str) -> Rate:
    """Parse `rate(value unit)` as EventBridge does, or raise `ScheduleError`."""
    match = _RATE.fullmatch(expression.strip())
    if not match:
        raise ScheduleError(
            f"{expression!r} is not rate(value unit), e.g. rate(5 minutes) or rate(1 hour)"
        )
    raw, unit = match["value"], match["unit"]
    if not raw.isdigit() or int(raw) < 1:
        raise ScheduleError(f"{expression!r}: the value must be a positive whole number")
    value = int(raw)
    singular = unit.removesuffix("s")
    if singular not in _UNIT_SECONDS:
        raise ScheduleError(f"{expression!r}: the unit must be minute(s), hour(s) or day(s)")
    if value == 1 and unit != singular:
        raise ScheduleError(f"{expression!r}: with 1 the unit is singular: rate(1 {singular})")
    if value != 1 and unit == singular:
        raise ScheduleError(
            f"{expression!r}: above 1 the unit is plural: rate({value} {singular}s)"
        )
    return Rate(value, singular)


# -- cron ---------------------------------------------------------------------------------

_CRON = re.compile(r"cron\((?P<fields>[^()]*)\)")
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {name: i + 1 for i, name in enumerate(_MONTH_NAMES)}
_DAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
_MAX_SEARCH_YEARS = 30

#: A day rule: (year, month, day) -> whether the day matches.
DayRule = Callable[[int, int, int], bool]


@attrs.frozen
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = attrs.field(factory=dict)


_MINUTE = _Field("minutes", 0, 59)
_HOUR = _Field("hours", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTHS)
_DOW = _Field("day-of-week", 1, 7, _DAYS)
_YEAR = _Field("year", 1970, 2199)


@attrs.frozen
class Cron:
    """`cron(...)`: the matching values of each field, and the day rule that joins two fields.

    Times are wall-clock times in the schedule's time zone (`ScheduleExpressionTimezone`);
    `next_after` works on naive or aware datetimes alike and keeps their `tzinfo`.
    """

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    years: frozenset[int]
    day_rule: DayRule = attrs.field(eq=False, repr=False)

    def matches_day(self, year: int, month: int, day: int) -> bool:
        return month in self.months and year in self.years and self.day_rule(year, month, day)

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        """The first fire time strictly after `after`, or None if there is none (ever, or in
        the next 30 years)."""
        start = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        day = start.date()
        last = dt.date(min(start.year + _MAX_SEARCH_YEARS, _YEAR.high), 12, 31)
        while day <= last:
            if day.year not in self.years:
                day = dt.date(day.year + 1, 1, 1)
                continue
            if day.month not in self.months:
                day = _first_of_next_month(day)
                continue
            if self.day_rule(day.year, day.month, day.day):
                for hour in hours:
                    for minute in minutes:
                        candidate = dt.datetime.combine(
                            day, dt.time(hour, minute), tzinfo=after.tzinfo
                        )
                        if candidate >= start:
                            return candidate
            day += dt.timedelta(days=1)
        return None

    def __str__(self) -> str:
        return self.expression


def parse_cron(expression: str) -> Cron:
    """Parse EventBridge's six-field `cron(...)`, or raise `ScheduleError` naming the field."""
    text = expression.strip()
    match = _CRON.fullmatch(text)
    if not match:
        raise ScheduleError(
            f"{expression!r} is not cron(minutes hours day-of-month month day-of-week year), "
            "e.g. cron(0 23 * * ? *)"
        )
    fields = match["fields"].split()
    if len(fields) != 6:
        raise ScheduleError(
            f"{expression!r} has {len(fields)} fields; EventBridge cron has 6: minutes hours "
            "day-of-month month day-of-week year (e.g. cron(0 23 * * ? *))"
        )
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ScheduleError(
            f"{expression!r}: exactly one of day-of-month and day-of-week must be '?' "
            "(e.g. cron(0 23 * * ? *) or cron(0 9 ? * MON-FRI *))"
        )
    if dom == "?":
        day_rule = _day_of_week_rule(dow, expression)
    else:
        day_rule = _day_of_month_rule(dom, expression)
    return Cron(
        expression=text,
        minutes=_values(minute, _MINUTE, expression),
        hours=_values(hour, _HOUR, expression),
        months=_values(month, _MONTH, expression),
        years=_values(year, _YEAR, expression),
        day_rule=day_rule,
    )


def parse_schedule(expression: str) -> Rate | Cron:
    """A Scheduler expression for a recurring schedule: `rate(...)` or `cron(...)`."""
    text = expression.strip()
    if text.startswith("rate("):
        return parse_rate(text)
    if text.startswith("cron("):
        return parse_cron(text)
    raise ScheduleError(
        f"{expression!r} is neither rate(...) nor cron(...) (one-time at(...) schedules do not "
        "repeat)"
    )


def _number(token: str, field: _Field, expression: str) -> int:
    upper = token.upper()
    if upper in field.names:
        return field.names[upper]
    if not token.isdigit():
        raise ScheduleError(f"{expression!r}: {token!r} is not a valid {field.name} value")
    value = int(token)
    if not field.low <= value <= field.high:
        raise ScheduleError(
            f"{expression!r}: {field.name} value {value} is outside {field.low}-{field.high}"
        )
    return value


def _values(text: str, field: _Field, expression: str) -> frozenset[int]:
    """The values a field matches: `*`, `a`, `a-b`, `a/n`, `*/n`, `a-b/n`, comma lists."""
    if text == "?":
        raise ScheduleError(
            f"{expression!r}: '?' is only allowed in day-of-month or day-of-week, "
            f"not in {field.name}"
        )
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{expression!r}: empty item in the {field.name} list")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(
                    f"{expression!r}: {part!r}: the increment must be a positive number"
                )
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, second = base.partition("-")
            low, high = _number(first, field, expression), _number(second, field, expression)
            if low > high:
                raise ScheduleError(f"{expression!r}: {field.name} range {base!r} runs backwards")
        else:
            low = _number(base, field, expression)
            # "a/n" starts at a and runs to the end of the field.
            high = field.high if slash else low
        values.update(range(low, high + 1, step))
    return frozenset(values)


def _day_of_month_rule(text: str, expression: str) -> DayRule:
    if text == "L":
        return lambda y, m, d: d == _days_in(y, m)
    if text == "LW":
        return lambda y, m, d: d == _nearest_weekday(y, m, _days_in(y, m))
    if text.endswith("W"):
        target = _number(text[:-1], _DOM, expression)
        return lambda y, m, d: target <= _days_in(y, m) and d == _nearest_weekday(y, m, target)
    days = _values(text, _DOM, expression)
    return lambda y, m, d: d in days


def _day_of_week_rule(text: str, expression: str) -> DayRule:
    if text == "L":
        return lambda y, m, d: _cron_weekday(y, m, d) == _DAYS["SAT"]
    if text.endswith("L"):
        weekday = _number(text[:-1], _DOW, expression)
        return lambda y, m, d: _cron_weekday(y, m, d) == weekday and d + 7 > _days_in(y, m)
    if "#" in text:
        first, _, nth_text = text.partition("#")
        weekday = _number(first, _DOW, expression)
        if not nth_text.isdigit() or not 1 <= int(nth_text) <= 5:
            raise ScheduleError(f"{expression!r}: in {text!r} the week must be 1 to 5")
        nth = int(nth_text)
        return lambda y, m, d: _cron_weekday(y, m, d) == weekday and (d - 1) // 7 + 1 == nth
    weekdays = _values(text, _DOW, expression)
    return lambda y, m, d: _cron_weekday(y, m, d) in weekdays


def _days_in(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _cron_weekday(year: int, month: int, day: int) -> int:
    """1 for Sunday up to 7 for Saturday, as cron counts."""
    return (dt.date(year, month, day).weekday() + 1) % 7 + 1


def _nearest_weekday(year: int, month: int, day: int) -> int:
    """The Monday-to-Friday day nearest to `day` without leaving the month (cron's `W`)."""
    weekday = dt.date(year, month, day).weekday()  # Monday is 0
    if weekday == 5:  # Saturday: Friday before, or Monday after if that leaves the month
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: Monday after, or Friday before at the month's end
        return day + 1 if day < _days_in(year, month) else day - 2
    return day


def _first_of_next_month(day: dt.date) -> dt.date:
    if day.month == 12:
        return dt.date(day.year + 1, 1, 1)
    return dt.date(day.year, day.month + 1, 1)
