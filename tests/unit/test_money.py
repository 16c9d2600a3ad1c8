from datetime import date
from decimal import Decimal

import pytest

from tasks.messaging.money import format_day, format_money

NBSP = "\xa0"


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        (Decimal("1234.5"), "USD", "en_US", "$1,234.50"),
        (Decimal("1234.5"), "EUR", "de_DE", f"1.234,50{NBSP}€"),
        (Decimal("1234.5"), "EUR", "de-DE", f"1.234,50{NBSP}€"),  # Shopify writes de-DE
        (Decimal("1234"), "JPY", "ja_JP", "￥1,234"),
        (Decimal("1234.4"), "JPY", "en_US", "¥1,234"),  # JPY has no minor unit
        (Decimal("9.95"), "GBP", "en_GB", "£9.95"),
        (Decimal("0"), "USD", "en_US", "$0.00"),
        ("19.90", "CAD", "fr_CA", f"19,90{NBSP}$"),  # message snapshots carry strings
    ],
)
def test_format_money(amount, currency, locale, expected):
    assert format_money(amount, currency, locale) == expected


@pytest.mark.parametrize("bad", ["xx_YY", "", None, "not a locale"])
def test_unknown_locale_falls_back_to_en_us(bad):
    assert format_money(Decimal("1234.5"), "USD", bad) == "$1,234.50"


def test_format_day_medium():
    assert format_day(date(2026, 11, 25), "en_US") == "Nov 25, 2026"
    assert format_day("2026-11-25", "de_DE") == "25.11.2026"
