"""What every config section shares: the error, the strict base model, money amounts."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class ConfigError(Exception):
    """A config file is missing or invalid; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _amounts_by_currency(amounts: dict[str, Decimal]) -> dict[str, Decimal]:
    """Money limits are per ISO 4217 currency: a bare number would be judged in any currency."""
    for code, amount in amounts.items():
        if len(code) != 3 or not code.isascii() or not code.isupper() or not code.isalpha():
            raise ValueError(f"{code!r} is not an ISO 4217 currency code (e.g. USD)")
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"{code}: {amount} is not an amount")
    return amounts


# Per currency, in that currency's major unit (JPY 45000, not 450.00); see configs/packing.yaml.
Amounts = Annotated[dict[str, Decimal], AfterValidator(_amounts_by_currency)]
