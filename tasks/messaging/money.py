"""Money and dates the way the customer's locale writes them (babel/CLDR)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import lru_cache

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency

FALLBACK_LOCALE = "en_US"


@lru_cache(maxsize=256)
def resolve_locale(locale: str | None) -> Locale:
    """A babel Locale for `de_DE`, `de-DE` or `de`; anything unknown or empty becomes en_US."""
    try:
        return Locale.parse((locale or "").replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return Locale.parse(FALLBACK_LOCALE)


def format_money(amount: Decimal | str | int, currency: str, locale: str | None) -> str:
    """`$1,234.50` (en_US, USD), `1.234,50 €` (de_DE, EUR), `¥1,234` (JPY has no decimals)."""
    return format_currency(Decimal(str(amount)), currency, locale=resolve_locale(locale))


def format_day(day: date | str, locale: str | None) -> str:
    """A date in the locale's medium format; accepts ISO strings from message snapshots."""
    if isinstance(day, str):
        day = date.fromisoformat(day)
    return format_date(day, format="medium", locale=resolve_locale(locale))
