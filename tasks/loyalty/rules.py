"""What an order is worth in points: eligible value, the rule in force, refund shares."""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from tasks.config import Config
from tasks.config.loyalty import EarningRule, LoyaltyConfig
from tasks.store.models import Order

POINTS_PAID_ATTRIBUTE = "points_redeemed_amount"
CENT = Decimal("0.0001")  # Money columns hold 4 decimals


def loyalty_config(cfg: Config) -> LoyaltyConfig:
    return cfg.loyalty


class InvalidInput(ValueError):
    """A value on an order or refund we cannot compute with; it goes to quarantine."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name, self.reason = field_name, reason


def money(value: Any, field_name: str) -> Decimal:
    """A finite, non-negative amount from a number or string."""
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise InvalidInput(field_name, f"not an amount: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise InvalidInput(field_name, f"must be a finite amount >= 0, got {value!r}")
    return amount


def points_paid(order: Order) -> Decimal:
    """What the customer paid with points (note attribute `points_redeemed_amount`), else 0."""
    raw = (order.note_attributes or {}).get(POINTS_PAID_ATTRIBUTE)
    if raw in (None, ""):
        return Decimal(0)
    return money(raw, f"note_attributes.{POINTS_PAID_ATTRIBUTE}")


def eligible_value(order: Order) -> Decimal:
    """Goods that earn points: non-gift-card lines after line and order-level discounts, without
    shipping, without tax (removed proportionally when prices include it) and without the part
    paid with points.

    `Order.discounts` is the order's total discount (Shopify `total_discounts`, which includes
    the line discounts); the order-level part is what the lines do not account for. Gift cards
    cannot be discounted, so it is allocated to the other lines only.
    """
    goods = sum((_line_net(line) for line in order.lines if not line.gift_card), Decimal(0))
    line_discounts = sum((line.total_discount for line in order.lines), Decimal(0))
    order_discount = max(order.discounts - line_discounts, Decimal(0))
    goods = max(goods - order_discount, Decimal(0))
    eligible = max(goods - points_paid(order), Decimal(0))
    if order.taxes_included and order.tax > 0 and eligible > 0:
        taxed_gross = goods + order.shipping  # what the included tax was charged on
        eligible -= order.tax * eligible / taxed_gross
    return max(eligible, Decimal(0)).quantize(CENT, ROUND_HALF_UP)


def _line_net(line: Any) -> Decimal:
    return line.unit_price * line.quantity - line.total_discount


def points_for(value: Decimal, rule: EarningRule, currency: str) -> int:
    """Whole points for `value` under `rule` (the currency's override if any), rounded down."""
    rate = rule.rate_for(currency)
    return int((value / rate.unit * rate.points_per_unit).to_integral_value(ROUND_FLOOR))


def reversal_points(
    earned: int, basis: Decimal, refunded_before: Decimal, reversed_before: int, amount: Decimal
) -> int:
    """This refund's points: cumulative share of `earned`, minus what was reversed already."""
    refunded = refunded_before + amount
    if basis <= 0 or refunded >= basis:
        target = earned
    else:
        target = int((earned * refunded / basis).to_integral_value(ROUND_FLOOR))
    return max(min(target, earned) - reversed_before, 0)
