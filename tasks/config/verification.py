"""configs/verification.yaml: the rules an order must pass before it is packed."""

from __future__ import annotations

from pydantic import Field

from tasks.config.base import Amounts, Strict


class PaymentRules(Strict):
    proceed: list[str]
    cancel: list[str]


class StockRules(Strict):
    reserve: bool = True


class EmailRules(Strict):
    pattern: str
    required: bool = False  # true: an order without an address is held (email_missing)


class CountryAddressRules(Strict):
    required: list[str] = Field(default_factory=list)
    zip_pattern: str | None = None


class AddressRules(Strict):
    required: list[str]
    countries: dict[str, CountryAddressRules] = Field(default_factory=dict)
    ship_to: list[str]


class RiskRules(Strict):
    max_order_value: Amounts = Field(default_factory=dict)
    max_line_quantity: int = 25
    hold_tags: list[str] = Field(default_factory=list)
    risk_attribute: str = "risk_score"
    max_risk_score: float = 0.7


class VerificationConfig(Strict):
    payment: PaymentRules
    stock: StockRules = StockRules()
    email: EmailRules
    address: AddressRules
    risk: RiskRules = RiskRules()
