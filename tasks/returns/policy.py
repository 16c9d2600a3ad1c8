"""The return policy (configs/returns.yaml) applied to loaded rows: what may come back, at what
cost, what it may be exchanged for, and whether an operator must look first.

Pure functions over rows the caller loaded (one query per batch), except `exchange_options`,
which reads the catalogue. Money is Decimal, quantized to cents and never rounded in the
store's favour against the customer: a unit's value is rounded down from what they paid.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tasks.aftercare.followups import on_sale
from tasks.config import Config
from tasks.config.returns import Reason
from tasks.store.models import Order, OrderLine, Product

CENT = Decimal("0.01")
# Product.attributes key intake stores (tasks/intake/formats/shopify.py, as tasks/lifecycle.py
# names it). Not imported from lifecycle: lifecycle's cancellations open returns (a circle).
SHOPIFY_PRODUCT_ID = "shopify_product_id"
VARIANT_SEPARATOR = " - "  # CSV catalogues name variants "Trail Runner - 10"
# Reasons that are not the customer's pick (tasks/returns/requests.py): no fee either way.
SYSTEM_REASONS = {
    "return_to_sender": Reason(label="Returned to sender", store_fault=True),
    "other": Reason(label="Other"),
}


@dataclass(frozen=True)
class ReturnableLine:
    """One order line as the returns page and open_returns see it."""

    line_id: int
    sku: str | None
    title: str
    variant_title: str | None
    units: int  # still returnable: bought − refunded − in returns not rejected
    unit_value: Decimal  # what the customer paid per unit after the line's discount
    why_not: str | None  # None: returnable; else a reason the customer can read
    # Units not refunded nor in a return, whatever the policy says: the limit of a return the
    # customer did not start (an operator's, Shopify's, a return to sender).
    unreturned: int = 0


def money(amount: Decimal) -> Decimal:
    return Decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP)


def long_date(day: date) -> str:
    return f"{day:%B} {day.day}, {day.year}"


# ---------------------------------------------------------------- what is returnable


def unit_value(line: OrderLine) -> Decimal:
    """Paid per unit after the line's discount, rounded down (never above what was paid)."""
    if line.quantity <= 0:
        return Decimal("0.00")
    paid = line.unit_price * line.quantity - (line.total_discount or 0)
    return max(Decimal(0), paid / line.quantity).quantize(CENT, rounding=ROUND_DOWN)


def final_sale(product: Product | None, cfg: Config) -> bool:
    """A final-sale category or tag (case-insensitive)."""
    if product is None:
        return False
    rule = cfg.returns.final_sale
    categories = {c.lower() for c in rule.categories}
    tags = {t.lower() for t in rule.tags}
    return (product.category or "").lower() in categories or bool(
        {t.lower() for t in product.tags or []} & tags)


def window_end(order: Order, product: Product | None, cfg: Config) -> datetime | None:
    """The last moment a return may be started: delivery + the category's days."""
    if order.delivered_at is None:
        return None
    days = cfg.returns.window.days_for(product.category if product else None)
    return order.delivered_at + timedelta(days=days)


def why_not(line: OrderLine, product: Product | None, units: int, in_returns: int,
            order: Order, now: datetime, cfg: Config) -> str | None:
    """The first rule that keeps a line from coming back, in the words the customer reads."""
    if line.gift_card:
        return "gift card"
    if not line.requires_shipping:
        return "nothing to send back (digital item)"
    if final_sale(product, cfg):
        return "final sale"
    end = window_end(order, product, cfg)
    if end is None:
        return "not delivered yet"
    if now > end:
        return f"return window closed on {long_date(end.date())}"
    if units <= 0:
        return "already returned" if in_returns else "already refunded"
    return None


def returnable_lines(order: Order, products_by_sku: Mapping[str, Product],
                     units_in_returns: Mapping[int, int], now: datetime,
                     cfg: Config) -> list[ReturnableLine]:
    """Every line of the order with the units still returnable, or why none are."""
    found = []
    for line in order.lines:
        product = products_by_sku.get(line.sku or "")
        in_returns = units_in_returns.get(line.id, 0)
        units = max(line.quantity - (line.refunded_quantity or 0) - in_returns, 0)
        reason = why_not(line, product, units, in_returns, order, now, cfg)
        found.append(ReturnableLine(line.id, line.sku, line.title, line.variant_title,
                                    0 if reason else units, unit_value(line), reason, units))
    return found


# ---------------------------------------------------------------- fees


def reason_of(key: str, cfg: Config) -> Reason:
    """The configured reason, else a system one (return to sender, other: no fees)."""
    return cfg.returns.reasons.get(key) or SYSTEM_REASONS.get(key) or SYSTEM_REASONS["other"]


def fees(reason: str, goods_value: Decimal, currency: str, cfg: Config
         ) -> tuple[Decimal, Decimal]:
    """(restocking fee, return shipping fee) kept back from the refund. The store's fault: none.
    A currency without a configured shipping fee is charged 0 (`fee_note` says so)."""
    picked, policy = reason_of(reason, cfg), cfg.returns
    if picked.store_fault:
        return Decimal("0.00"), Decimal("0.00")
    restocking = Decimal(0)
    if picked.restocking_fee:
        restocking = goods_value * policy.restocking_fee_percent / 100
    shipping = Decimal(0)
    if picked.return_shipping == "customer":
        shipping = policy.return_shipping_fee.get(currency, Decimal(0))
    return money(restocking), money(min(shipping, goods_value - money(restocking)))


def fee_note(reason: str, currency: str, cfg: Config) -> str | None:
    """Why no return shipping fee was kept although the customer pays it (for the timeline)."""
    picked = reason_of(reason, cfg)
    if (picked.return_shipping == "customer" and not picked.store_fault
            and currency not in cfg.returns.return_shipping_fee):
        return f"no return_shipping_fee configured for {currency}: none kept back"
    return None


# ---------------------------------------------------------------- exchanges


def product_family(product: Product) -> str:
    """What makes two variants the same product: Shopify's product id, else the title before
    " - " (CSV catalogues: "Trail Runner - 10" and "Trail Runner - 11")."""
    shopify_id = (product.attributes or {}).get(SHOPIFY_PRODUCT_ID)
    if shopify_id:
        return f"shopify:{shopify_id}"
    return "title:" + product.title.partition(VARIANT_SEPARATOR)[0].strip().lower()


def available(product: Product) -> int:
    return (product.stock or 0) - (product.reserved or 0)


def exchange_options(session: Session, skus: Iterable[str]) -> dict[str, list[Product]]:
    """sku → the other variants of the same product in stock and not deleted (two queries)."""
    wanted = sorted({s for s in skus if s})
    if not wanted:
        return {}
    originals = list(session.scalars(select(Product).where(Product.sku.in_(wanted))))
    ids = sorted({str(p.attributes[SHOPIFY_PRODUCT_ID]) for p in originals
                  if (p.attributes or {}).get(SHOPIFY_PRODUCT_ID)})
    bases = sorted({p.title.partition(VARIANT_SEPARATOR)[0].strip() for p in originals})
    match = [Product.title == base for base in bases] + [
        Product.title.like(base.replace("%", r"\%").replace("_", r"\_") + " - %", escape="\\")
        for base in bases]
    if ids:
        match.append(Product.attributes[SHOPIFY_PRODUCT_ID].as_string().in_(ids))
    family: dict[str, list[Product]] = defaultdict(list)
    for product in session.scalars(select(Product).where(or_(*match)).order_by(Product.sku)):
        if available(product) > 0 and on_sale(product):
            family[product_family(product)].append(product)
    return {p.sku: [o for o in family[product_family(p)] if o.sku != p.sku] for p in originals}


# ---------------------------------------------------------------- auto-approval


def auto_approval(order: Order, goods_value: Decimal, reason: str, recent_returns: int,
                  cfg: Config) -> str | None:
    """None when the return may be approved at once; else why an operator looks first.
    `recent_returns`: the customer's returns in the repeat period before this one."""
    rule = cfg.returns.auto_approve
    if not rule.enabled:
        return "auto-approve off"
    limit = rule.max_value.get(order.currency)
    if limit is None:
        return f"currency {order.currency} has no auto-approve limit"
    if goods_value > limit:
        return f"value {money(goods_value)} {order.currency} above {limit}"
    # The store's own mistakes are never held against a customer as "repeat returns".
    if not reason_of(reason, cfg).store_fault and recent_returns >= rule.repeat_returns:
        return f"{recent_returns} returns in {rule.repeat_period_days} days"
    return None
