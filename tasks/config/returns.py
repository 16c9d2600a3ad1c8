"""configs/returns.yaml: the return policy (window, final sale, reasons, fees, auto-approval)."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator

from tasks.config.base import Amounts, Strict

Payer = Literal["store", "customer"]


class Reason(Strict):
    """A reason the customer can pick; who pays the return shipping for it."""

    label: str
    return_shipping: Payer = "store"
    restocking_fee: bool = False  # the policy's restocking fee applies to this reason
    # The store's fault (damaged, wrong item): never a fee, and no repeat-returner check.
    store_fault: bool = False


class Window(Strict):
    """Days from delivery a return may be started; per product category (case-insensitive)."""

    default_days: int = Field(default=30, ge=0)
    by_category: dict[str, int] = Field(default_factory=dict)

    def days_for(self, category: str | None) -> int:
        by_lower = {name.lower(): days for name, days in self.by_category.items()}
        return by_lower.get((category or "").lower(), self.default_days)


class FinalSale(Strict):
    """What cannot be returned: product categories and product tags (case-insensitive)."""

    categories: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


class AutoApprove(Strict):
    """A request is approved without an operator when every rule holds; else it waits for one
    (the Prefect form `returns-review`, or `journeys returns decide`)."""

    enabled: bool = True
    max_value: Amounts = Field(default_factory=dict)  # per currency; others: an operator
    # A repeat returner (this many returns or more in the period) goes to an operator.
    repeat_returns: int = Field(default=3, ge=1)
    repeat_period_days: int = Field(default=180, ge=1)


class Instructions(Strict):
    """What the customer reads once a return is approved."""

    send_within_days: int = Field(default=14, ge=1)  # the parcel must leave by then
    drop_off: str = "Drop the parcel at any post office or carrier drop-off point."
    address: str = ""  # where returns go; the store's postal address when empty
    refund_business_days: int = Field(default=5, ge=0)  # after the parcel arrives


class ReturnsConfig(Strict):
    """configs/returns.yaml (tasks/returns/)."""

    enabled: bool = True
    window: Window = Window()
    final_sale: FinalSale = FinalSale()
    reasons: dict[str, Reason] = Field(default_factory=lambda: {
        "changed_mind": Reason(label="Changed my mind", return_shipping="customer")})
    exchanges: bool = True  # offer another size or colour of the same product, in stock
    restocking_fee_percent: Decimal = Field(default=Decimal(0), ge=0, le=100)
    return_shipping_fee: Amounts = Field(default_factory=dict)  # when the customer pays
    auto_approve: AutoApprove = AutoApprove()
    instructions: Instructions = Instructions()
    # Keep-with-credit (an operator's offer): the customer keeps the goods and gets this
    # share of their value as store credit.
    keep_with_credit_percent: Decimal = Field(default=Decimal(20), ge=0, le=100)
    # A cancelled order's mail: "voided or refunded to the original payment method within N
    # business days" (tasks/cancellation.py; journeys moves no money, Shopify does).
    cancel_refund_business_days: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _reasons_present(self) -> ReturnsConfig:
        if not self.reasons:
            raise ValueError("reasons: list at least one reason a customer can pick")
        for key in self.reasons:
            if not key.isidentifier() or len(key) > 40:
                raise ValueError(f"reasons: {key!r} must be a short word_like_this key")
        return self
