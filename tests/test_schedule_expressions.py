"""Schedule expressions as EventBridge reads them: the next fire times, in UTC, from a fixed instant.

Expected values were worked out from calendars, not from the implementation:
- 2026-07-03 is a Friday; 2026-08-01 a Saturday; 2026-11-01, 2026-02-01 and 2026-03-01 Sundays;
  2026-01-31 and 2026-02-28 Saturdays; 2026-05-31 and 2027-01-31 Sundays; 2028 is a leap year.
- America/New_York: EST (UTC-5) until 2027-03-14 02:00, when clocks jump to 03:00 EDT (UTC-4);
  EDT until 2027-11-07 02:00 EDT, when clocks go back to 01:00 EST (01:00-01:59 happens twice).
- Europe/Berlin and Europe/Paris: CET (UTC+1) until 2027-03-28 02:00 -> 03:00 CEST (UTC+2);
  CEST until 2027-10-31 03:00 -> 02:00 CET (02:00-02:59 happens twice). Asia/Kolkata is UTC+5:30.
- EventBridge Scheduler's daylight saving rules: a local time in the spring gap is skipped; a local
  time that happens twice in the autumn fires once, at its first occurrence.

AWS references: EventBridge "Cron expressions reference" and "Rate expressions reference"
(docs.aws.amazon.com/eventbridge/latest/userguide/eb-cron-expressions.html, eb-rate-expressions.html),
EventBridge Scheduler "Schedule types" (docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from runtime.functions.expressions import Cron, Rate, ScheduleError, next_times, parse, zone

UTC = timezone.utc

# A Friday afternoon, mid-minute: weekday rules must skip the weekend, minute rules the half minute.
FRI = "2026-07-03T17:52:30Z"


def instant(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def iso(moment: datetime | None) -> str:
    assert moment is not None and moment.utcoffset() == timedelta(0), moment
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def case(case_id: str, expression: str, start: str, expected: list[str], tz: str = "UTC",
         count: int | None = None):
    """`count` (default: as many as expected) is how many fire times to ask for; asking for more than
    `expected` holds asserts that the schedule ends there."""
    return pytest.param(expression, tz, start, expected, count or len(expected), id=case_id)


AWS_DOCUMENTATION_EXAMPLES = [
    # The examples table of "Cron expressions reference".
    case("doc-10am-every-day", "cron(0 10 * * ? *)", FRI,
         ["2026-07-04T10:00:00Z", "2026-07-05T10:00:00Z", "2026-07-06T10:00:00Z"]),
    case("doc-12:15pm-every-day", "cron(15 12 * * ? *)", FRI,
         ["2026-07-04T12:15:00Z", "2026-07-05T12:15:00Z", "2026-07-06T12:15:00Z"]),
    case("doc-6pm-mon-fri", "cron(0 18 ? * MON-FRI *)", FRI,
         ["2026-07-03T18:00:00Z", "2026-07-06T18:00:00Z", "2026-07-07T18:00:00Z", "2026-07-08T18:00:00Z"]),
    case("doc-8am-first-day-of-month", "cron(0 8 1 * ? *)", FRI,
         ["2026-08-01T08:00:00Z", "2026-09-01T08:00:00Z", "2026-10-01T08:00:00Z"]),
    case("doc-every-15-minutes", "cron(0/15 * * * ? *)", FRI,
         ["2026-07-03T18:00:00Z", "2026-07-03T18:15:00Z", "2026-07-03T18:30:00Z", "2026-07-03T18:45:00Z"]),
    case("doc-every-10-minutes-mon-fri", "cron(0/10 * ? * MON-FRI *)", "2026-07-03T23:35:00Z",
         ["2026-07-03T23:40:00Z", "2026-07-03T23:50:00Z", "2026-07-06T00:00:00Z", "2026-07-06T00:10:00Z"]),
    case("doc-every-5-minutes-8am-5:55pm-mon-fri", "cron(0/5 8-17 ? * MON-FRI *)", FRI,
         ["2026-07-03T17:55:00Z", "2026-07-06T08:00:00Z", "2026-07-06T08:05:00Z", "2026-07-06T08:10:00Z"]),
    case("doc-9am-first-monday", "cron(0 9 ? * 2#1 *)", FRI,
         ["2026-07-06T09:00:00Z", "2026-08-03T09:00:00Z", "2026-09-07T09:00:00Z", "2026-10-05T09:00:00Z"]),
    # The examples in its wildcard definitions.
    case("doc-wildcard-1/10-minutes-11th-21st-31st", "cron(1/10 * * * ? *)", FRI,
         ["2026-07-03T18:01:00Z", "2026-07-03T18:11:00Z", "2026-07-03T18:21:00Z", "2026-07-03T18:31:00Z"]),
    case("doc-wildcard-JAN,FEB,MAR", "cron(0 0 1 JAN,FEB,MAR ? *)", FRI,
         ["2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z", "2028-01-01T00:00:00Z"]),
    case("doc-wildcard-days-1-15", "cron(0 12 1-15 * ? *)", "2026-07-14T13:00:00Z",
         ["2026-07-15T12:00:00Z", "2026-08-01T12:00:00Z", "2026-08-02T12:00:00Z"]),
    case("doc-wildcard-3W-weekday-nearest-the-3rd", "cron(0 9 3W * ? *)", "2025-12-31T00:00:00Z",
         ["2026-01-02T09:00:00Z",     # Jan 3 is a Saturday: Friday the 2nd
          "2026-02-03T09:00:00Z", "2026-03-03T09:00:00Z", "2026-04-03T09:00:00Z",
          "2026-05-04T09:00:00Z"]),   # May 3 is a Sunday: Monday the 4th
    case("doc-wildcard-3#2-second-tuesday", "cron(0 9 ? * 3#2 *)", FRI,
         ["2026-07-14T09:00:00Z", "2026-08-11T09:00:00Z", "2026-09-08T09:00:00Z", "2026-10-13T09:00:00Z"]),
    # The EventBridge API reference's example of a ScheduleExpression, and the rate reference's examples.
    case("doc-api-8pm-every-day", "cron(0 20 * * ? *)", FRI,
         ["2026-07-03T20:00:00Z", "2026-07-04T20:00:00Z", "2026-07-05T20:00:00Z"]),
    case("doc-rate-1-minute", "rate(1 minute)", FRI,
         ["2026-07-03T17:53:00Z", "2026-07-03T17:54:00Z", "2026-07-03T17:55:00Z"]),
    case("doc-rate-5-minutes", "rate(5 minutes)", FRI,
         ["2026-07-03T17:55:00Z", "2026-07-03T18:00:00Z", "2026-07-03T18:05:00Z"]),
    case("doc-rate-1-hour", "rate(1 hour)", FRI,
         ["2026-07-03T18:00:00Z", "2026-07-03T19:00:00Z", "2026-07-03T20:00:00Z"]),
    case("doc-rate-1-day", "rate(1 day)", FRI,
         ["2026-07-04T00:00:00Z", "2026-07-05T00:00:00Z", "2026-07-06T00:00:00Z"]),
]

LAST_AND_WEEKDAY = [
    case("L-last-day-of-month-through-leap-february", "cron(30 23 L * ? *)", "2027-12-15T00:00:00Z",
         ["2027-12-31T23:30:00Z", "2028-01-31T23:30:00Z", "2028-02-29T23:30:00Z", "2028-03-31T23:30:00Z",
          "2028-04-30T23:30:00Z"]),
    case("6L-last-friday", "cron(0 17 ? * 6L *)", "2026-01-01T00:00:00Z",
         ["2026-01-30T17:00:00Z", "2026-02-27T17:00:00Z", "2026-03-27T17:00:00Z", "2026-04-24T17:00:00Z",
          "2026-05-29T17:00:00Z"]),
    case("5L-last-thursday", "cron(0 17 ? * 5L *)", "2026-01-01T00:00:00Z",
         ["2026-01-29T17:00:00Z", "2026-02-26T17:00:00Z", "2026-03-26T17:00:00Z", "2026-04-30T17:00:00Z"]),
    case("L-alone-in-day-of-week-is-saturday", "cron(0 12 ? * L *)", FRI,
         ["2026-07-04T12:00:00Z", "2026-07-11T12:00:00Z", "2026-07-18T12:00:00Z"]),
    case("15W-saturday-to-friday-sunday-to-monday", "cron(0 9 15W * ? *)", "2026-07-01T00:00:00Z",
         ["2026-07-15T09:00:00Z",
          "2026-08-14T09:00:00Z",     # Aug 15 is a Saturday: Friday the 14th
          "2026-09-15T09:00:00Z", "2026-10-15T09:00:00Z",
          "2026-11-16T09:00:00Z"]),   # Nov 15 is a Sunday: Monday the 16th
    case("15W-sunday-in-february-and-march", "cron(0 9 15W * ? *)", "2026-01-20T00:00:00Z",
         ["2026-02-16T09:00:00Z", "2026-03-16T09:00:00Z", "2026-04-15T09:00:00Z"]),
    case("1W-saturday-first-goes-forward-not-into-previous-month", "cron(0 9 1W * ? *)", "2026-07-02T00:00:00Z",
         ["2026-08-03T09:00:00Z",     # Aug 1 is a Saturday: Monday the 3rd, not Friday July 31
          "2026-09-01T09:00:00Z", "2026-10-01T09:00:00Z",
          "2026-11-02T09:00:00Z"]),   # Nov 1 is a Sunday: Monday the 2nd
    case("31W-weekend-last-day-goes-back-not-into-next-month", "cron(0 9 31W JAN,MAY,OCT ? *)",
         "2026-05-01T00:00:00Z",
         ["2026-05-29T09:00:00Z",     # May 31 is a Sunday, the last day: Friday the 29th
          "2026-10-30T09:00:00Z",     # Oct 31 is a Saturday: Friday the 30th
          "2027-01-29T09:00:00Z",     # Jan 31 is a Sunday: Friday the 29th
          "2027-05-31T09:00:00Z"]),   # a Monday
    case("LW-last-weekday", "cron(0 18 LW * ? *)", "2026-01-01T00:00:00Z",
         ["2026-01-30T18:00:00Z",     # Jan 31 is a Saturday
          "2026-02-27T18:00:00Z",     # Feb 28 is a Saturday
          "2026-03-31T18:00:00Z", "2026-04-30T18:00:00Z",
          "2026-05-29T18:00:00Z"]),   # May 31 is a Sunday
    case("2#5-fifth-monday-months-without-one-skipped", "cron(0 9 ? * 2#5 *)", "2026-01-01T00:00:00Z",
         ["2026-03-30T09:00:00Z", "2026-06-29T09:00:00Z", "2026-08-31T09:00:00Z", "2026-11-30T09:00:00Z",
          "2027-03-29T09:00:00Z"]),
]

YEARS_NAMES_STEPS = [
    case("year-2027-only", "cron(0 0 1 1 ? 2027)", FRI, ["2027-01-01T00:00:00Z"], count=3),
    case("years-2027-2028-then-nothing", "cron(0 12 1 JAN,JUL ? 2027-2028)", FRI,
         ["2027-01-01T12:00:00Z", "2027-07-01T12:00:00Z", "2028-01-01T12:00:00Z", "2028-07-01T12:00:00Z"],
         count=5),
    case("past-year-2020-never", "cron(0 0 1 1 ? 2020)", FRI, [], count=3),
    case("year-2040-more-than-eight-years-ahead", "cron(0 12 1 JAN ? 2040)", FRI, ["2040-01-01T12:00:00Z"],
         count=2),
    case("year-list-up-to-2199", "cron(0 0 1 1 ? 2030,2045,2199)", FRI,
         ["2030-01-01T00:00:00Z", "2045-01-01T00:00:00Z", "2199-01-01T00:00:00Z"], count=4),
    case("month-names-range-and-list", "cron(0 6 1 JAN-MAR,OCT ? *)", "2026-02-15T00:00:00Z",
         ["2026-03-01T06:00:00Z", "2026-10-01T06:00:00Z", "2027-01-01T06:00:00Z", "2027-02-01T06:00:00Z",
          "2027-03-01T06:00:00Z"]),
    case("day-names-list", "cron(0 6 ? * MON,WED,FRI *)", FRI,
         ["2026-07-06T06:00:00Z", "2026-07-08T06:00:00Z", "2026-07-10T06:00:00Z"]),
    case("month-step-*/3", "cron(0 0 1 */3 ? *)", FRI,
         ["2026-10-01T00:00:00Z", "2027-01-01T00:00:00Z", "2027-04-01T00:00:00Z"]),
    case("minute-step-*/10", "cron(*/10 14 * * ? *)", "2026-07-01T14:25:00Z",
         ["2026-07-01T14:30:00Z", "2026-07-01T14:40:00Z", "2026-07-01T14:50:00Z", "2026-07-02T14:00:00Z",
          "2026-07-02T14:10:00Z"]),
    case("day-step-1-30/7-no-29th-in-february", "cron(0 0 1-30/7 * ? *)", "2026-02-10T00:00:00Z",
         ["2026-02-15T00:00:00Z", "2026-02-22T00:00:00Z", "2026-03-01T00:00:00Z", "2026-03-08T00:00:00Z",
          "2026-03-15T00:00:00Z"]),
]

RATES = [   # aligned to the Unix epoch, i.e. to 00:00:00 UTC
    case("rate-5-minutes-from-a-fire-time-is-strictly-after", "rate(5 minutes)", "2026-07-03T18:00:00Z",
         ["2026-07-03T18:05:00Z", "2026-07-03T18:10:00Z", "2026-07-03T18:15:00Z"]),
    case("rate-2-hours", "rate(2 hours)", FRI,
         ["2026-07-03T18:00:00Z", "2026-07-03T20:00:00Z", "2026-07-03T22:00:00Z"]),
    case("rate-30-seconds-lambent-extension", "rate(30 seconds)", FRI,
         ["2026-07-03T17:53:00Z", "2026-07-03T17:53:30Z", "2026-07-03T17:54:00Z"]),
    case("rate-1-second-lambent-extension", "rate(1 second)", FRI,
         ["2026-07-03T17:52:31Z", "2026-07-03T17:52:32Z", "2026-07-03T17:52:33Z"]),
    case("rate-1-day-ignores-time-zone", "rate(1 day)", FRI,
         ["2026-07-04T00:00:00Z", "2026-07-05T00:00:00Z", "2026-07-06T00:00:00Z"], tz="Asia/Kolkata"),
]

PLAIN_CRON = [
    case("plain-*/20-9-monday", "*/20 9 * * 1", FRI,
         ["2026-07-06T09:00:00Z", "2026-07-06T09:20:00Z", "2026-07-06T09:40:00Z", "2026-07-13T09:00:00Z"]),
    case("plain-dom-or-dow-1st-or-sunday", "0 0 1 * 0", "2026-07-20T00:00:00Z",
         ["2026-07-26T00:00:00Z",     # a Sunday
          "2026-08-01T00:00:00Z",     # the 1st, a Saturday
          "2026-08-02T00:00:00Z", "2026-08-09T00:00:00Z"]),
    case("plain-dow-7-is-sunday", "0 12 * * 7", FRI,
         ["2026-07-05T12:00:00Z", "2026-07-12T12:00:00Z", "2026-07-19T12:00:00Z"]),
    case("plain-dow-0-is-sunday", "0 12 * * 0", FRI,
         ["2026-07-05T12:00:00Z", "2026-07-12T12:00:00Z", "2026-07-19T12:00:00Z"]),
    case("plain-day-names-mon-fri", "30 8 * * MON-FRI", FRI,
         ["2026-07-06T08:30:00Z", "2026-07-07T08:30:00Z", "2026-07-08T08:30:00Z"]),
    case("plain-dom-only", "0 0 1 * *", FRI,
         ["2026-08-01T00:00:00Z", "2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z"]),
    case("plain-in-europe-paris", "0 12 * * 7", FRI,
         ["2026-07-05T10:00:00Z", "2026-07-12T10:00:00Z", "2026-07-19T10:00:00Z"], tz="Europe/Paris"),
]

TIME_ZONES = [
    case("paris-summer-9am-is-7utc", "cron(0 9 * * ? *)", FRI,
         ["2026-07-04T07:00:00Z", "2026-07-05T07:00:00Z", "2026-07-06T07:00:00Z"], tz="Europe/Paris"),
    case("paris-9am-across-spring-change", "cron(0 9 * * ? *)", "2027-03-26T12:00:00Z",
         ["2027-03-27T08:00:00Z", "2027-03-28T07:00:00Z", "2027-03-29T07:00:00Z"], tz="Europe/Paris"),
    case("new-york-9am-mon-fri-across-spring-change", "cron(0 9 ? * MON-FRI *)", "2027-03-11T00:00:00Z",
         ["2027-03-11T14:00:00Z", "2027-03-12T14:00:00Z", "2027-03-15T13:00:00Z", "2027-03-16T13:00:00Z"],
         tz="America/New_York"),
    case("new-york-8am-first-of-month-across-autumn-change", "cron(0 8 1 * ? *)", "2027-09-15T00:00:00Z",
         ["2027-10-01T12:00:00Z", "2027-11-01T12:00:00Z", "2027-12-01T13:00:00Z"], tz="America/New_York"),
    case("kolkata-9am-is-3:30utc", "cron(0 9 * * ? *)", FRI,
         ["2026-07-04T03:30:00Z", "2026-07-05T03:30:00Z", "2026-07-06T03:30:00Z"], tz="Asia/Kolkata"),
    case("kolkata-00:15-is-previous-utc-day", "cron(15 0 * * ? *)", FRI,     # local 23:22:30 on July 3
         ["2026-07-03T18:45:00Z", "2026-07-04T18:45:00Z", "2026-07-05T18:45:00Z"], tz="Asia/Kolkata"),
]

DAYLIGHT_SAVING = [
    # The spring gap: the local time does not exist that day, so that day's run is skipped.
    case("new-york-2:30-skipped-on-2027-03-14", "cron(30 2 * * ? *)", "2027-03-12T12:00:00Z",
         ["2027-03-13T07:30:00Z", "2027-03-15T06:30:00Z", "2027-03-16T06:30:00Z"], tz="America/New_York"),
    case("berlin-2:30-skipped-on-2027-03-28", "cron(30 2 * * ? *)", "2027-03-26T12:00:00Z",
         ["2027-03-27T01:30:00Z", "2027-03-29T00:30:00Z", "2027-03-30T00:30:00Z"], tz="Europe/Berlin"),
    case("new-york-hourly-across-gap-no-2am", "cron(0 * * * ? *)", "2027-03-14T05:30:00Z",
         ["2027-03-14T06:00:00Z",     # 01:00 EST
          "2027-03-14T07:00:00Z",     # 03:00 EDT: 02:00 does not exist
          "2027-03-14T08:00:00Z"], tz="America/New_York"),
    case("new-york-half-hourly-across-gap", "cron(0/30 * * * ? *)", "2027-03-14T05:45:00Z",
         ["2027-03-14T06:00:00Z", "2027-03-14T06:30:00Z",      # 01:00, 01:30 EST
          "2027-03-14T07:00:00Z", "2027-03-14T07:30:00Z"],     # 03:00, 03:30 EDT
         tz="America/New_York"),
    # The autumn repeat: a local time that happens twice fires once, at its first (daylight) occurrence.
    case("new-york-1:30-once-on-2027-11-07", "cron(30 1 * * ? *)", "2027-11-05T12:00:00Z",
         ["2027-11-06T05:30:00Z",     # 01:30 EDT
          "2027-11-07T05:30:00Z",     # 01:30 EDT, the first of the two; not again at 06:30 (01:30 EST)
          "2027-11-08T06:30:00Z"],    # 01:30 EST
         tz="America/New_York"),
    case("new-york-half-hourly-across-repeat-each-wall-time-once", "cron(0/30 * * * ? *)",
         "2027-11-07T04:15:00Z",
         ["2027-11-07T04:30:00Z",     # 00:30 EDT
          "2027-11-07T05:00:00Z",     # 01:00 EDT
          "2027-11-07T05:30:00Z",     # 01:30 EDT; 06:00Z and 06:30Z are 01:00 and 01:30 again (EST): no
          "2027-11-07T07:00:00Z",     # 02:00 EST
          "2027-11-07T07:30:00Z"], tz="America/New_York"),
    case("new-york-half-hourly-from-inside-the-repeat", "cron(0/30 * * * ? *)", "2027-11-07T06:10:00Z",
         ["2027-11-07T07:00:00Z", "2027-11-07T07:30:00Z", "2027-11-07T08:00:00Z"], tz="America/New_York"),
    case("new-york-hourly-across-repeat", "cron(0 * * * ? *)", "2027-11-07T04:30:00Z",
         ["2027-11-07T05:00:00Z", "2027-11-07T07:00:00Z", "2027-11-07T08:00:00Z"], tz="America/New_York"),
    case("berlin-2:30-once-on-2027-10-31", "cron(30 2 * * ? *)", "2027-10-30T12:00:00Z",
         ["2027-10-31T00:30:00Z",     # 02:30 CEST, the first of the two
          "2027-11-01T01:30:00Z", "2027-11-02T01:30:00Z"], tz="Europe/Berlin"),
]


@pytest.mark.parametrize(
    ("expression", "tz", "start", "expected", "count"),
    AWS_DOCUMENTATION_EXAMPLES + LAST_AND_WEEKDAY + YEARS_NAMES_STEPS + RATES + PLAIN_CRON + TIME_ZONES
    + DAYLIGHT_SAVING,
)
def test_next_fire_times(expression: str, tz: str, start: str, expected: list[str], count: int) -> None:
    schedule = parse(expression, tz)
    assert [iso(moment) for moment in next_times(schedule, instant(start), count)] == expected


def test_next_after_is_none_when_the_years_are_past() -> None:
    schedule = parse("cron(0 0 1 1 ? 2020)")
    assert isinstance(schedule, Cron)
    assert schedule.next_after(instant(FRI)) is None
    assert parse("cron(0 12 1 JAN ? 2027)").next_after(instant("2027-01-01T12:00:00Z")) is None


def test_next_after_accepts_a_non_utc_moment() -> None:
    paris = instant(FRI).astimezone(zone("Europe/Paris"))      # 19:52:30 CEST
    assert iso(parse("cron(0 20 * * ? *)").next_after(paris)) == "2026-07-03T20:00:00Z"
    assert iso(parse("rate(5 minutes)").next_after(paris)) == "2026-07-03T17:55:00Z"


def test_rates_parse_to_seconds() -> None:
    assert parse("rate(1 minute)") == Rate(60)
    assert parse("rate(5 minutes)") == Rate(300)
    assert parse("rate(2 hours)") == Rate(7200)
    assert parse("rate(1 day)") == Rate(86400)
    assert parse("rate(30 seconds)") == Rate(30)


BAD = [
    # (expression, time zone, fragments the message must contain)
    pytest.param("rate(1 minutes)", "UTC", ["'minute'", "1"], id="rate-1-takes-singular"),
    pytest.param("rate(1 hours)", "UTC", ["'hour'"], id="rate-1-hours-doc-invalid"),
    pytest.param("rate(5 hour)", "UTC", ["'hours'"], id="rate-5-hour-doc-invalid"),
    pytest.param("rate(5 weeks)", "UTC", ["weeks"], id="rate-unknown-unit"),
    pytest.param("rate(0 minutes)", "UTC", ["value", "positive"], id="rate-zero-value"),
    pytest.param("rate(-5 minutes)", "UTC", ["rate(value unit)"], id="rate-negative-value"),
    pytest.param("rate(5)", "UTC", ["rate(value unit)"], id="rate-missing-unit"),
    pytest.param("cron(61 * * * ? *)", "UTC", ["minutes", "61"], id="cron-minute-61"),
    pytest.param("cron(0 24 * * ? *)", "UTC", ["hours", "24"], id="cron-hour-24"),
    pytest.param("cron(0 0 32 * ? *)", "UTC", ["day-of-month", "32"], id="cron-day-of-month-32"),
    pytest.param("cron(0 0 ? 13 * *)", "UTC", ["month", "13"], id="cron-month-13"),
    pytest.param("cron(0 0 ? * 8 *)", "UTC", ["day-of-week", "8"], id="cron-day-of-week-8"),
    pytest.param("cron(0 0 1 1 ? 1969)", "UTC", ["year", "1969"], id="cron-year-before-1970"),
    pytest.param("cron(0 0 1 1 ? 2200)", "UTC", ["year", "2200"], id="cron-year-after-2199"),
    pytest.param("cron(0 10 1 * MON *)", "UTC", ["day-of-month", "day-of-week", "'?'"], id="cron-both-days-set"),
    pytest.param("cron(0 10 * * * *)", "UTC", ["day-of-month", "day-of-week", "'?'"], id="cron-neither-day-?"),
    pytest.param("cron(0 10 ? * ? *)", "UTC", ["day-of-month", "day-of-week", "'?'"], id="cron-both-days-?"),
    pytest.param("cron(0 10 * * ?)", "UTC", ["six fields", "got 5"], id="cron-five-fields"),
    pytest.param("cron(0 10 * * ? * *)", "UTC", ["six fields", "got 7"], id="cron-seven-fields"),
    pytest.param("cron(0/0 * * * ? *)", "UTC", ["minutes", "'0'", "step"], id="cron-step-0/0"),
    pytest.param("cron(*/x * * * ? *)", "UTC", ["minutes", "'x'", "step"], id="cron-step-not-a-number"),
    pytest.param("cron(0 5-1 * * ? *)", "UTC", ["hours", "5-1", "backwards"], id="cron-backwards-range-5-1"),
    pytest.param("cron(0 0 ? FOO * *)", "UTC", ["month", "'FOO'"], id="cron-unknown-month-FOO"),
    pytest.param("cron(0 0 ? * FOO *)", "UTC", ["day-of-week", "'FOO'"], id="cron-unknown-day-FOO"),
    pytest.param("cron(0 0 ? * 2#6 *)", "UTC", ["day-of-week", "#6"], id="cron-#6"),
    pytest.param("cron(0 0 ? * 3#1,6#3 *)", "UTC", ["day-of-week", "#"], id="cron-two-#-expressions-doc-invalid"),
    pytest.param("cron(0 0 0W * ? *)", "UTC", ["day-of-month", "0"], id="cron-0W"),
    pytest.param("0 0 * * 8", "UTC", ["day-of-week", "8"], id="plain-day-of-week-8"),
    pytest.param("0 0 * *", "UTC", ["rate(value unit)", "cron("], id="plain-four-fields"),
    pytest.param("every 5 minutes", "UTC", ["rate(value unit)"], id="not-an-expression"),
    pytest.param("rate(5 minutes)", "Mars/Olympus", ["time zone", "Mars/Olympus"], id="unknown-time-zone"),
    pytest.param("cron(0 9 * * ? *)", "", ["time zone"], id="empty-time-zone"),
]


@pytest.mark.parametrize(("expression", "tz", "fragments"), BAD)
def test_bad_expressions_name_the_wrong_part(expression: str, tz: str, fragments: list[str]) -> None:
    with pytest.raises(ScheduleError) as raised:
        parse(expression, tz)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_zone_rejects_unknown_names() -> None:
    assert zone("Asia/Kolkata").key == "Asia/Kolkata"
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        zone("Mars/Olympus")
