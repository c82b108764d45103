"""Activities' "not in the future" is Phnom Penh's date (UTC+7, no daylight saving), not the server's or
UTC's: between 17:00 and 24:00 UTC Phnom Penh is already on the next day. The clock is a parameter."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from services.activities.activities.service import local_today

UTC = timezone.utc


@pytest.mark.parametrize(("instant", "phnom_penh_day"), [
    (datetime(2026, 3, 10, 16, 59, 59, tzinfo=UTC), date(2026, 3, 10)),
    (datetime(2026, 3, 10, 17, 0, tzinfo=UTC), date(2026, 3, 11)),  # midnight in Phnom Penh
    (datetime(2026, 3, 10, 17, 30, tzinfo=UTC), date(2026, 3, 11)),
    (datetime(2026, 12, 31, 23, 0, tzinfo=UTC), date(2027, 1, 1)),
    (datetime(2026, 7, 1, 0, 30, tzinfo=UTC), date(2026, 7, 1)),  # no summer time: +7 all year
], ids=["before local midnight", "local midnight", "evening in UTC", "new year", "July"])
def test_the_local_day_is_phnom_penhs(instant: datetime, phnom_penh_day: date):
    assert local_today(instant) == phnom_penh_day


def test_an_instant_in_another_zone_gives_the_same_local_day():
    instant = datetime(2026, 3, 10, 17, 30, tzinfo=UTC)
    assert local_today(instant.astimezone(timezone(timedelta(hours=-5)))) == local_today(instant) == date(2026, 3, 11)


def test_without_a_clock_it_is_todays_date_in_phnom_penh():
    before = datetime.now(UTC)
    today = local_today()
    after = datetime.now(UTC)
    assert today in {(before + timedelta(hours=7)).date(), (after + timedelta(hours=7)).date()}
