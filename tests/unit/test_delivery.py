"""Estimated delivery: Los Angeles warehouse, 14:00 cutoff, 1 processing day, US holidays."""

from datetime import UTC, date, datetime

import pytest

from tasks.delivery import estimate_delivery, resolve_method


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_weekday_before_cutoff_dispatches_next_business_day(cfg):
    # Wed 18 Nov 10:00 UTC = 02:00 in LA: dispatch Thu 19, then 4 US transit days.
    assert estimate_delivery(utc(2026, 11, 18, 10), "standard", "US", cfg.shipping) == date(
        2026, 11, 25
    )


def test_weekend_order_starts_processing_on_monday(cfg):
    # Sat 14 Nov: processing starts Mon 16, dispatch Tue 17, express US 2 days → Thu 19.
    placed = utc(2026, 11, 14, 18)
    assert estimate_delivery(placed, "express", "US", cfg.shipping) == date(2026, 11, 19)


def test_thanksgiving_is_not_a_business_day(cfg):
    # Fri 20 Nov 18:00 UTC (10:00 LA): dispatch Mon 23, transit Tue, Wed, (Thu 26 off), Fri, Mon.
    placed = utc(2026, 11, 20, 18)
    assert estimate_delivery(placed, "standard", "US", cfg.shipping) == date(2026, 11, 30)


def test_order_on_thanksgiving_waits_for_friday(cfg):
    placed = utc(2026, 11, 26, 17)  # 09:00 LA on the holiday
    assert estimate_delivery(placed, "pickup", "US", cfg.shipping) == date(2026, 11, 30)


@pytest.mark.parametrize(
    ("placed", "dispatch"),
    [
        (utc(2026, 11, 18, 21, 59), date(2026, 11, 19)),  # 13:59 LA: before the 14:00 cutoff
        (utc(2026, 11, 18, 22, 0), date(2026, 11, 19)),  # 14:00 exactly still makes it
        (utc(2026, 11, 18, 22, 1), date(2026, 11, 20)),  # 14:01 LA: next business day
    ],
)
def test_cutoff_in_warehouse_time(cfg, placed, dispatch):
    assert estimate_delivery(placed, "pickup", "US", cfg.shipping) == dispatch


def test_late_utc_evening_is_the_same_afternoon_in_los_angeles(cfg):
    # 23:30 UTC Wed = 15:30 LA Wed: after cutoff, so processing starts Thu and dispatch is Fri.
    assert estimate_delivery(utc(2026, 11, 18, 23, 30), "pickup", None, cfg.shipping) == date(
        2026, 11, 20
    )
    # 21:30 UTC is 13:30 in LA: in time, although 21:30 is far past 14:00 on a UTC clock.
    assert estimate_delivery(utc(2026, 11, 18, 21, 30), "pickup", None, cfg.shipping) == date(
        2026, 11, 19
    )


def test_pickup_has_no_transit_days(cfg):
    placed = utc(2026, 11, 18, 10)
    pickup = estimate_delivery(placed, "pickup", "US", cfg.shipping)
    assert pickup == date(2026, 11, 19)
    assert estimate_delivery(placed, "express", "US", cfg.shipping) == date(2026, 11, 23)


def test_transit_days_depend_on_destination(cfg):
    placed = utc(2026, 11, 18, 10)
    # CA 7 days: Fri, Mon, Tue, Wed, (Thu off) Fri, Mon, Tue.
    assert estimate_delivery(placed, "standard", "CA", cfg.shipping) == date(2026, 12, 1)
    # unknown destination uses the method's default (5): Fri, Mon, Tue, Wed, (Thu off) Fri.
    assert estimate_delivery(placed, "standard", "NZ", cfg.shipping) == date(2026, 11, 27)


@pytest.mark.parametrize(
    ("code", "title", "method"),
    [
        ("UPS_EXPRESS_SAVER", "UPS Express Saver", "express"),
        ("custom", "Overnight Air", "express"),
        ("FedEx Ground", None, "standard"),
        (None, "Local Pickup", "pickup"),
        ("LTL-Freight", "Pallet", "freight"),
        ("xyz", "Mystery courier", "standard"),  # no alias: the default method
        ("express-ground", None, "express"),  # first alias in config order wins
        ("ground", "Express", "standard"),  # the code is matched before the title
    ],
)
def test_resolve_method(cfg, code, title, method):
    assert resolve_method(code, title, cfg.shipping) == method
