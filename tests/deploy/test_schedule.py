"""fluidity.deploy.schedule: EventBridge Scheduler's rate() and cron() rules, and fire times."""

from __future__ import annotations

import datetime as dt

import pytest

from fluidity.deploy.schedule import (
    Cron,
    Rate,
    ScheduleError,
    parse_cron,
    parse_rate,
    parse_schedule,
)

T = dt.datetime


@pytest.mark.parametrize(
    ("expression", "value", "unit", "seconds"),
    [
        ("rate(1 minute)", 1, "minute", 60),
        ("rate(5 minutes)", 5, "minute", 300),
        ("rate(1 hour)", 1, "hour", 3600),
        ("rate(12 hours)", 12, "hour", 43200),
        ("rate(1 day)", 1, "day", 86400),
        ("rate(7 days)", 7, "day", 604800),
        (" rate(5 minutes) ", 5, "minute", 300),
    ],
)
def test_rates_eventbridge_accepts(expression: str, value: int, unit: str, seconds: int) -> None:
    rate = parse_rate(expression)
    assert (rate.value, rate.unit, rate.interval.total_seconds()) == (value, unit, seconds)
    assert str(rate) == expression.strip()


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("rate(1 minutes)", "singular"),
        ("rate(5 minute)", "plural"),
        ("rate(0 minutes)", "positive"),
        ("rate(-5 minutes)", "positive"),
        ("rate(1.5 hours)", "positive"),
        ("rate(5 seconds)", "minute(s), hour(s) or day(s)"),
        ("rate(5 weeks)", "minute(s), hour(s) or day(s)"),
        ("rate(5minutes)", "rate(value unit)"),
        ("rate(5  minutes)", "rate(value unit)"),
        ("rate 5 minutes", "rate(value unit)"),
        ("rate()", "rate(value unit)"),
    ],
)
def test_rates_eventbridge_refuses(expression: str, why: str) -> None:
    with pytest.raises(ScheduleError, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse_rate(expression)


def test_rate_fires_on_its_grid_from_the_start() -> None:
    rate = parse_rate("rate(5 minutes)")
    start = T(2025, 1, 1, 0, 0)
    assert rate.next_after(T(2024, 12, 31), start) == start
    assert rate.next_after(start, start) == T(2025, 1, 1, 0, 5)
    assert rate.next_after(T(2025, 1, 1, 0, 7, 30), start) == T(2025, 1, 1, 0, 10)
    assert rate.next_after(T(2025, 1, 1, 0, 10), start) == T(2025, 1, 1, 0, 15)


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0 23 * * ? *)",
        "cron(0/15 8-17 ? * MON-FRI *)",
        "cron(*/5 * * * ? *)",
        "cron(0 12 ? * 2#1 *)",
        "cron(0 12 ? * 6L *)",
        "cron(0 12 ? * L *)",
        "cron(0 12 L * ? *)",
        "cron(0 12 LW * ? *)",
        "cron(0 12 15W * ? *)",
        "cron(0 10 1,15 JAN-MAR ? 2025-2030)",
        "cron(30 6 ? * sun,sat *)",
        "cron(0 0 1 1 ? 1970)",
        "cron(59 23 31 12 ? 2199)",
    ],
)
def test_crons_eventbridge_accepts(expression: str) -> None:
    assert isinstance(parse_schedule(expression), Cron)


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("cron(0 23 * * *)", "has 5 fields"),
        ("cron(0 0 23 * * ? *)", "has 7 fields"),
        ("cron(0 23 * * * *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 23 ? * ? *)", "exactly one of day-of-month and day-of-week"),
        ("cron(0 23 1 * MON *)", "exactly one of day-of-month and day-of-week"),
        ("cron(60 23 * * ? *)", "minutes value 60 is outside 0-59"),
        ("cron(0 24 * * ? *)", "hours value 24 is outside 0-23"),
        ("cron(0 0 0 * ? *)", "day-of-month value 0 is outside 1-31"),
        ("cron(0 0 32 * ? *)", "day-of-month value 32"),
        ("cron(0 0 1 13 ? *)", "month value 13"),
        ("cron(0 0 ? * 8 *)", "day-of-week value 8"),
        ("cron(0 0 ? * 0 *)", "day-of-week value 0"),
        ("cron(0 0 1 * ? 1969)", "year value 1969"),
        ("cron(0 0 1 * ? 2200)", "year value 2200"),
        ("cron(0 0 1 FOO ? *)", "'FOO' is not a valid month value"),
        ("cron(0 ? 1 * ? *)", "only allowed in day-of-month or day-of-week"),
        ("cron(0 10-5 * * ? *)", "runs backwards"),
        ("cron(0/0 * * * ? *)", "increment must be a positive number"),
        ("cron(0,,5 * * * ? *)", "empty item"),
        ("cron(0 0 ? * 2#6 *)", "week must be 1 to 5"),
        ("cron(0 0 * * ? *", "is not cron("),
        ("0 23 * * ? *", "neither rate"),
        ("at(2025-01-01T00:00:00)", "neither rate"),
    ],
)
def test_crons_eventbridge_refuses(expression: str, why: str) -> None:
    with pytest.raises(ScheduleError) as raised:
        parse_schedule(expression)
    assert why in str(raised.value)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("cron(0 23 * * ? *)", T(2025, 6, 2, 12, 0), T(2025, 6, 2, 23, 0)),
        ("cron(0 23 * * ? *)", T(2025, 6, 2, 23, 0), T(2025, 6, 3, 23, 0)),
        ("cron(0 23 * * ? *)", T(2025, 12, 31, 23, 30), T(2026, 1, 1, 23, 0)),
        ("cron(0/15 8-17 ? * MON-FRI *)", T(2025, 6, 6, 17, 50), T(2025, 6, 9, 8, 0)),
        ("cron(0/15 8-17 ? * MON-FRI *)", T(2025, 6, 9, 8, 0, 1), T(2025, 6, 9, 8, 15)),
        ("cron(*/5 * * * ? *)", T(2025, 6, 2, 12, 3, 59), T(2025, 6, 2, 12, 5)),
        ("cron(0 12 ? * 6L *)", T(2025, 6, 1), T(2025, 6, 27, 12, 0)),  # last Friday
        ("cron(0 12 ? * 2#1 *)", T(2025, 6, 3), T(2025, 7, 7, 12, 0)),  # first Monday
        ("cron(0 12 L * ? *)", T(2024, 2, 1), T(2024, 2, 29, 12, 0)),  # leap year
        ("cron(0 12 LW * ? *)", T(2025, 5, 1), T(2025, 5, 30, 12, 0)),  # 31st is a Saturday
        ("cron(0 12 1W * ? *)", T(2025, 2, 1), T(2025, 2, 3, 12, 0)),  # Feb 1 is a Saturday
        ("cron(0 12 15W * ? *)", T(2025, 6, 1), T(2025, 6, 16, 12, 0)),  # 15th is a Sunday
        ("cron(0 0 29 2 ? *)", T(2025, 1, 1), T(2028, 2, 29, 0, 0)),
        ("cron(0 0 1 1 ? 2030)", T(2025, 1, 1), T(2030, 1, 1, 0, 0)),
        ("cron(0 0 1 1 ? 2020)", T(2025, 1, 1), None),
        ("cron(0 0 30 2 ? *)", T(2025, 1, 1), None),
    ],
)
def test_cron_next_fire_time(expression: str, after: T, expected: T | None) -> None:
    assert parse_cron(expression).next_after(after) == expected


def test_cron_keeps_the_time_zone_it_is_given() -> None:
    after = T(2025, 6, 2, 12, 0, tzinfo=dt.UTC)
    assert parse_cron("cron(0 23 * * ? *)").next_after(after) == T(2025, 6, 2, 23, 0, tzinfo=dt.UTC)


def test_parse_schedule_dispatches() -> None:
    assert parse_schedule("rate(5 minutes)") == Rate(5, "minute")
    assert str(parse_schedule("cron(0 23 * * ? *)")) == "cron(0 23 * * ? *)"
