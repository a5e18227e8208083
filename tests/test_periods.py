"""Periods: calendar windows in a time zone, fixed-length windows, lazy resets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from conftest import Clock

from budgetguard import BudgetExceededError, BudgetGuard, ConfigurationError
from budgetguard.periods import Period, parse_period, parse_tz

UTC = timezone.utc
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_daily_window_is_the_calendar_day() -> None:
    """A daily window runs from midnight to midnight, with the date as its id."""
    window = Period("daily").window(utc(2024, 1, 15, 12, 30), UTC)
    assert window.id == "2024-01-15"
    assert window.start == utc(2024, 1, 15)
    assert window.end == utc(2024, 1, 16)


def test_weekly_window_is_the_iso_week_starting_monday() -> None:
    """A weekly window starts on Monday and is named by ISO year and week."""
    window = Period("weekly").window(utc(2024, 1, 21, 23, 59), UTC)  # a Sunday
    assert window.id == "2024-W03"
    assert window.start == utc(2024, 1, 15)  # Monday
    assert window.end == utc(2024, 1, 22)
    assert window.start is not None and window.start.weekday() == 0


def test_weekly_window_uses_the_iso_year_across_new_year() -> None:
    """Monday 30 Dec 2024 belongs to ISO week 2025-W01."""
    window = Period("weekly").window(utc(2024, 12, 31, 10), UTC)
    assert window.id == "2025-W01"
    assert window.start == utc(2024, 12, 30)
    assert window.end == utc(2025, 1, 6)


def test_monthly_window_is_the_calendar_month() -> None:
    """A monthly window is the calendar month, not 28 or 30 days."""
    january = Period("monthly").window(utc(2024, 1, 31, 23, 59, 59), UTC)
    assert (january.id, january.start, january.end) == ("2024-01", utc(2024, 1, 1), utc(2024, 2, 1))
    december = Period("monthly").window(utc(2023, 12, 15), UTC)
    assert december.end == utc(2024, 1, 1)


def test_yearly_window_is_the_calendar_year() -> None:
    """A yearly window runs from 1 January to 1 January."""
    window = Period("yearly").window(utc(2024, 7, 4), UTC)
    assert (window.id, window.start, window.end) == ("2024", utc(2024, 1, 1), utc(2025, 1, 1))


def test_lifetime_window_never_ends() -> None:
    """None and 'lifetime' are one unbounded window."""
    for value in (None, "lifetime"):
        window = parse_period(value).window(utc(2024, 1, 1), UTC)
        assert (window.id, window.start, window.end) == ("all", None, None)


def test_fixed_length_windows_count_from_the_anchor() -> None:
    """A timedelta period cuts time into consecutive windows from the anchor."""
    period = parse_period(timedelta(hours=1))
    anchor = utc(2024, 1, 1, 0, 30)
    first = period.window(utc(2024, 1, 1, 1, 29, 59), UTC, anchor)
    second = period.window(utc(2024, 1, 1, 1, 30), UTC, anchor)
    assert first.start == anchor and first.end == utc(2024, 1, 1, 1, 30)
    assert second.start == utc(2024, 1, 1, 1, 30) and second.end == utc(2024, 1, 1, 2, 30)
    assert first.id != second.id
    assert period.label == "every 3600s"


def test_seconds_are_a_fixed_length_period() -> None:
    """A number of seconds is the same as a timedelta."""
    assert parse_period(90) == parse_period(timedelta(seconds=90))


@pytest.mark.parametrize("bad", ["fortnightly", "Monthly", "", 0, -5, timedelta(0), True, [1]])
def test_unknown_period_is_a_clear_error(bad: object) -> None:
    """Unknown names and non-positive durations raise ValueError that names the period."""
    with pytest.raises(ValueError, match="period"):
        parse_period(bad)


def test_unknown_time_zone_is_a_clear_error(guard: BudgetGuard) -> None:
    """An unknown zone raises ConfigurationError naming it, wherever a zone is given."""
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        parse_tz("Mars/Olympus")
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        guard.set_budget("1", user="a", period="daily", tz="Mars/Olympus")
    assert guard.get_budget("a") is None
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        BudgetGuard(metrics=False, tz="Mars/Olympus")


def test_naive_datetime_is_refused() -> None:
    """A window of a naive datetime is ambiguous and raises ValueError."""
    with pytest.raises(ValueError, match="aware"):
        Period("daily").window(datetime(2024, 1, 1), UTC)


def test_new_york_month_ends_at_five_utc_on_february_first() -> None:
    """January in New York ends at 05:00 UTC on 1 February."""
    period = Period("monthly")
    late = period.window(utc(2024, 2, 1, 4, 59, 59), NEW_YORK)
    assert late.id == "2024-01"
    assert late.end == utc(2024, 2, 1, 5)
    assert period.window(utc(2024, 2, 1, 5), NEW_YORK).id == "2024-02"


@pytest.mark.parametrize(
    ("day", "hours"),
    [((2024, 3, 10), 23), ((2024, 11, 3), 25), ((2024, 3, 11), 24)],
)
def test_dst_change_days_are_23_and_25_hours_long(day: tuple[int, int, int], hours: int) -> None:
    """A daily window in New York lasts 23 h on the spring change and 25 h in the autumn."""
    at = datetime(*day, 12, tzinfo=NEW_YORK)
    window = Period("daily").window(at, NEW_YORK)
    assert window.start is not None and window.end is not None
    assert window.end - window.start == timedelta(hours=hours)
    assert window.id == "{:04d}-{:02d}-{:02d}".format(*day)


def test_leap_day_is_its_own_day_and_february_has_29_days() -> None:
    """29 Feb 2024 is a daily window, and February 2024 lasts 29 days."""
    day = Period("daily").window(utc(2024, 2, 29, 18), UTC)
    assert day.id == "2024-02-29"
    assert day.end == utc(2024, 3, 1)
    month = Period("monthly").window(utc(2024, 2, 29, 23, 59), UTC)
    assert month.start is not None and month.end is not None
    assert month.end - month.start == timedelta(days=29)
    common = Period("monthly").window(utc(2023, 2, 28), UTC)
    assert common.start is not None and common.end is not None
    assert common.end - common.start == timedelta(days=28)


def test_previous_window_is_the_one_before() -> None:
    """previous() of February is January; of lifetime is lifetime."""
    period = Period("monthly")
    feb = period.window(utc(2024, 2, 10), UTC)
    assert period.previous(feb, UTC).id == "2024-01"
    life = Period("lifetime").window(utc(2024, 2, 10), UTC)
    assert Period("lifetime").previous(life, UTC) == life


def test_january_spend_is_not_counted_in_february_utc(
    clock: Clock, clocked_guard: BudgetGuard
) -> None:
    """At 00:00 UTC on 1 Feb a monthly budget starts at zero, with no job run."""
    guard = clocked_guard
    clock.set(utc(2024, 1, 31, 23, 59, 59))
    guard.set_budget("1.00", user="alice", period="monthly")
    guard.record_spend("0.90", user="alice")

    @guard.budgeted(user="alice", estimate="0.20", cost=lambda _: "0.20")
    def call() -> str:
        return "ok"

    with pytest.raises(BudgetExceededError):
        call()
    clock.set(utc(2024, 2, 1))
    assert guard.spend("alice") == Decimal(0)
    assert call() == "ok"
    assert guard.spend("alice") == Decimal("0.20")
    assert guard.remaining("alice") == Decimal("0.80")


def test_new_york_budget_resets_at_five_utc(clock: Clock, clocked_guard: BudgetGuard) -> None:
    """A New York monthly budget still counts January spend at 04:59 UTC on 1 Feb."""
    guard = clocked_guard
    clock.set(utc(2024, 2, 1, 3))  # 22:00 on 31 Jan in New York
    guard.set_budget("1", user="bob", period="monthly", tz="America/New_York")
    guard.record_spend("0.40", user="bob")
    clock.set(utc(2024, 2, 1, 4, 59, 59))
    assert guard.spend("bob") == Decimal("0.40")
    clock.set(utc(2024, 2, 1, 5))
    assert guard.spend("bob") == Decimal(0)
    assert guard.remaining("bob") == Decimal(1)


def test_guard_time_zone_is_the_default_for_budgets(clock: Clock) -> None:
    """BudgetGuard(tz=...) aligns budgets that do not name their own zone."""
    guard = BudgetGuard(metrics=False, clock=clock, tz="America/New_York")
    clock.set(utc(2024, 2, 1, 3))
    budget = guard.set_budget("1", user="bob", period="monthly")
    assert budget.resets_at(clock()) == utc(2024, 2, 1, 5)
    guard.close()


def test_daily_budget_on_a_dst_day_resets_after_23_hours(
    clock: Clock, clocked_guard: BudgetGuard
) -> None:
    """A New York daily budget on 10 March 2024 resets 23 hours after it began."""
    guard = clocked_guard
    start = datetime(2024, 3, 10, tzinfo=NEW_YORK)
    clock.set(start + timedelta(minutes=1))
    budget = guard.set_budget("1", user="carol", period="daily", tz="America/New_York")
    guard.record_spend("0.5", user="carol")
    resets = budget.resets_at(clock())
    assert resets is not None
    assert resets - start == timedelta(hours=23)
    clock.set(resets - timedelta(seconds=1))
    assert guard.spend("carol") == Decimal("0.5")
    clock.set(resets)
    assert guard.spend("carol") == Decimal(0)


def test_leap_day_spend_moves_to_march(clock: Clock, clocked_guard: BudgetGuard) -> None:
    """Spend on 29 Feb counts in February and in that day only."""
    guard = clocked_guard
    clock.set(utc(2024, 2, 28, 12))
    guard.set_budget("5", user="dan", period="daily")
    guard.set_budget("50", period="monthly")
    guard.record_spend("1", user="dan")
    clock.set(utc(2024, 2, 29, 12))
    assert guard.spend("dan") == Decimal(0)
    guard.record_spend("2", user="dan")
    assert guard.spend("dan") == Decimal(2)
    assert guard.spend() == Decimal(3)
    clock.set(utc(2024, 3, 1))
    assert guard.spend("dan") == Decimal(0)
    assert guard.spend() == Decimal(0)


def test_weekly_budget_resets_on_monday(clock: Clock, clocked_guard: BudgetGuard) -> None:
    """A weekly budget counts Monday to Sunday and starts again on Monday."""
    guard = clocked_guard
    clock.set(utc(2024, 1, 15, 0, 0, 1))  # Monday
    guard.set_budget("1", user="eve", period="weekly")
    guard.record_spend("0.3", user="eve")
    clock.set(utc(2024, 1, 21, 23, 59))  # Sunday
    assert guard.spend("eve") == Decimal("0.3")
    clock.set(utc(2024, 1, 22))
    assert guard.spend("eve") == Decimal(0)


def test_rolling_window_budget_resets_after_its_length(
    clock: Clock, clocked_guard: BudgetGuard
) -> None:
    """A one-hour budget counts spend from its creation for one hour, then starts again."""
    guard = clocked_guard
    clock.set(utc(2024, 1, 1, 10, 15))
    budget = guard.set_budget("1", user="fay", period=timedelta(hours=1))
    assert budget.resets_at(clock()) == utc(2024, 1, 1, 11, 15)
    guard.record_spend("0.7", user="fay")
    clock.set(utc(2024, 1, 1, 11, 14, 59))
    assert guard.spend("fay") == Decimal("0.7")
    clock.set(utc(2024, 1, 1, 11, 15))
    assert guard.spend("fay") == Decimal(0)


def test_resets_at_names_the_end_of_the_current_window(
    clock: Clock, clocked_guard: BudgetGuard
) -> None:
    """resets_at is the next window start; None for lifetime budgets."""
    guard = clocked_guard
    clock.set(utc(2024, 1, 15, 12))
    assert guard.set_budget("1", user="a", period="daily").resets_at(clock()) == utc(2024, 1, 16)
    assert guard.set_budget("1", user="b", period="weekly").resets_at(clock()) == utc(2024, 1, 22)
    assert guard.set_budget("1", user="c", period="monthly").resets_at(clock()) == utc(2024, 2, 1)
    assert guard.set_budget("1", user="d", period="yearly").resets_at(clock()) == utc(2025, 1, 1)
    assert guard.set_budget("1", user="e").resets_at(clock()) is None
    clock.set(utc(2024, 3, 5))
    assert guard.get_budget("c") is not None
    assert guard.get_budget("c").resets_at(clock()) == utc(2024, 4, 1)  # type: ignore[union-attr]


def test_refusal_says_when_the_budget_resets(clock: Clock, clocked_guard: BudgetGuard) -> None:
    """BudgetExceededError.resets_at is the end of the refusing budget's window."""
    guard = clocked_guard
    clock.set(utc(2024, 1, 31, 20))
    guard.set_budget("1", user="alice", period="monthly", tz="America/New_York")
    guard.record_spend("1", user="alice")
    with pytest.raises(BudgetExceededError) as caught:
        guard._begin("alice", Decimal("0.01"))
    assert caught.value.resets_at == utc(2024, 2, 1, 5)
    assert caught.value.period == "monthly"
