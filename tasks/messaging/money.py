"""Money and dates the way the customer's locale writes them (babel/CLDR)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

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
    return _formatted(str(amount), currency, locale)


@lru_cache(maxsize=65_536)  # prices repeat across orders, and babel's formatting is not cheap
def _formatted(amount: str, currency: str, locale: str | None) -> str:
    """Keyed by the amount's text: -0 and 0 are equal Decimals but babel writes them apart."""
    return format_currency(Decimal(amount), currency, locale=resolve_locale(locale))


def format_day(day: date | str, locale: str | None) -> str:
    """A date in the locale's medium format; accepts ISO strings from message snapshots."""
    if isinstance(day, str):
        day = date.fromisoformat(day)
    return format_date(day, format="medium", locale=resolve_locale(locale))


@lru_cache(maxsize=1024)
def known_locale(candidate: str | None) -> str | None:
    """`de_DE` for `de-DE`; None when babel does not know it."""
    if not candidate:
        return None
    try:
        return str(Locale.parse(candidate.replace("-", "_")))
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def order_locale(order_locale_: str | None, customer_locale: str | None, default: str) -> str:
    """The order's locale if known, else the customer's, else the store default."""
    return known_locale(order_locale_) or known_locale(customer_locale) or default


def address_lines(address: dict[str, Any], locale: str) -> list[str]:
    """Name, company, street, `city province zip`, country name in the reader's language."""
    name = address.get("name") or " ".join(
        str(address[k]) for k in ("first_name", "last_name") if address.get(k)
    )
    code = str(address.get("country_code") or "")
    country = resolve_locale(locale).territories.get(code.upper(), address.get("country") or code)
    city = " ".join(str(address[k]) for k in ("city", "province_code", "zip") if address.get(k))
    parts = (name, address.get("company"), address.get("address1"), address.get("address2"),
             city, country)
    return [str(part) for part in parts if part]
