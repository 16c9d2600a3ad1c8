"""Estimated delivery dates: warehouse clock, dispatch cutoff, then business days of the origin."""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from tasks.config import ShippingConfig

SATURDAY = 5


def resolve_method(code: str | None, title: str | None, cfg: ShippingConfig) -> str:
    """Map a storefront shipping line to one of our methods (by code first, then by title)."""
    for text in (code, title):
        needle = (text or "").lower()
        for alias, method in cfg.aliases.items():
            if alias.lower() in needle:
                return method
    return cfg.default_method


def is_business_day(day: date, holidays: Collection[date]) -> bool:
    return day.weekday() < SATURDAY and day not in holidays


def add_business_days(day: date, count: int, holidays: Collection[date]) -> date:
    """The business day `count` business days after `day` (`day` itself when count is 0)."""
    while count > 0:
        day += timedelta(days=1)
        if is_business_day(day, holidays):
            count -= 1
    return day


def processing_start(placed_at: datetime, cfg: ShippingConfig, holidays: Collection[date]) -> date:
    """The warehouse day work on the order starts: today unless after cutoff or a day off."""
    local = placed_at.astimezone(ZoneInfo(cfg.timezone))
    day = local.date()
    if local.time() > cfg.dispatch_cutoff or not is_business_day(day, holidays):
        day = add_business_days(day, 1, holidays)
    return day


def estimate_delivery(
    placed_at: datetime, method: str, country: str | None, cfg: ShippingConfig
) -> date:
    """Promised delivery date: processing start + processing days (dispatch) + transit days."""
    holidays = frozenset(cfg.holidays)
    dispatch = add_business_days(
        processing_start(placed_at, cfg, holidays), cfg.processing_days, holidays
    )
    return add_business_days(dispatch, cfg.methods[method].transit_to(country), holidays)
