"""Verification: may this order be packed? Payment, catalog and stock, address, e-mail, risk.

Rules come from configs/verification.yaml. A failing rule holds the order with reason codes
(`code: detail; ...`) that operators see in the timeline and in reports; cancelled orders close.
Money limits are per currency: an order in a currency the configs have no thresholds for holds
(`currency_unsupported`) rather than being judged against another currency's figures.
What intake found (an order total nothing explains) holds too. Stock is reserved (decremented)
only for orders that pass, in order-id order, so two orders in one batch cannot both take the
last item. Lines that need no shipping (gift cards, digital goods) need no stock or address.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from email.errors import MessageError
from email.headerregistry import Address
from functools import lru_cache

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tasks.config import VerificationConfig
from tasks.intake.ingest import INTAKE_FINDING
from tasks.journey import StageResult
from tasks.runtime import Runtime
from tasks.states import OrderState
from tasks.store.db import is_postgres
from tasks.store.journal import Transition, apply_transitions, claim_orders
from tasks.store.models import Order, OrderEvent, OrderLine, Product
from tasks.store.stock import move_reserved

RECEIVED, VERIFIED = OrderState.RECEIVED, OrderState.VERIFIED
ON_HOLD, CANCELLED = OrderState.ON_HOLD, OrderState.CANCELLED
UNSUPPORTED_CURRENCY = ("no money thresholds for it in configs/verification.yaml "
                        "risk.max_order_value and configs/packing.yaml")


@dataclass(frozen=True)
class Finding:
    """One reason an order cannot proceed as it is."""

    code: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


def format_reasons(findings: Sequence[Finding]) -> str:
    return "; ".join(str(f) for f in findings)[:500]


def needs_shipping(line: OrderLine) -> bool:
    """Physical goods; None (a line not stored yet) counts as the column's default, True."""
    return line.requires_shipping is not False


def ships(order: Order) -> bool:
    """Something in the order is to be packed and shipped."""
    return any(needs_shipping(line) for line in order.lines)


def reason_codes(hold_reason: str | None) -> list[str]:
    """The codes in a stored hold reason, for grouping in reports."""
    if not hold_reason:
        return []
    return [part.split(":", 1)[0].strip() for part in hold_reason.split(";") if part.strip()]


# --- the rules: each returns the findings for one order -------------------------------------


def cancellation(order: Order, rules: VerificationConfig) -> Finding | None:
    if order.cancelled_at is not None:
        return Finding("cancelled", f"cancelled at source {order.cancelled_at:%Y-%m-%d %H:%M}")
    if order.financial_status in rules.payment.cancel:
        return Finding("cancelled", f"payment {order.financial_status}")
    return None


def payment_findings(order: Order, rules: VerificationConfig) -> list[Finding]:
    if order.financial_status in rules.payment.proceed:
        return []
    return [Finding("payment_not_captured", order.financial_status or "unknown")]


def email_findings(order: Order, rules: VerificationConfig) -> list[Finding]:
    """An invalid address holds; a missing one only if configured (`email.required`): such an
    order gets no mail, and each skipped message says why."""
    if not order.email:
        if rules.email.required:
            return [Finding("email_missing", "the order has no e-mail address")]
        return []
    if not re.fullmatch(rules.email.pattern, order.email) or not _mailable(order.email):
        return [Finding("email_invalid", order.email)]
    return []


@lru_cache(maxsize=65_536)  # customers order again; parsing an address is not cheap
def _mailable(address: str) -> bool:
    """The mail builder must accept it too (it refuses e.g. `a..b@x.com`, which a regex lets by)."""
    try:
        parsed = Address(addr_spec=address)
    except (MessageError, ValueError, IndexError, AttributeError):
        return False
    return not getattr(parsed, "defects", None) and parsed.addr_spec == address


def address_findings(address: dict, rules: VerificationConfig) -> list[Finding]:
    country = (address.get("country_code") or "").upper()
    if country and country not in rules.address.ship_to:
        return [Finding("address_unsupported_country", country)]
    country_rules = rules.address.countries.get(country)
    required = list(rules.address.required) + (country_rules.required if country_rules else [])
    missing = [name for name in required if not str(address.get(name) or "").strip()]
    findings = [Finding("address_incomplete", ", ".join(missing))] if missing else []
    zip_code = str(address.get("zip") or "").strip()
    pattern = country_rules.zip_pattern if country_rules else None
    if zip_code and pattern and not re.fullmatch(pattern, zip_code):
        findings.append(Finding("address_invalid_zip", f"{zip_code} ({country})"))
    return findings


def currency_findings(order: Order, rules: VerificationConfig) -> list[Finding]:
    """An order in a currency without money thresholds cannot be judged (not in dollars either).

    configs/packing.yaml names the same currencies as risk.max_order_value (checked at load).
    """
    if order.currency in rules.risk.max_order_value:
        return []
    detail = f"{order.currency or 'none'} ({UNSUPPORTED_CURRENCY})"
    return [Finding("currency_unsupported", detail)]


def risk_findings(order: Order, rules: VerificationConfig) -> list[Finding]:
    risk = rules.risk
    findings = []
    limit = risk.max_order_value.get(order.currency)  # None: currency_findings holds the order
    if limit is not None and order.total > limit:
        findings.append(Finding("high_value", f"{order.total} {order.currency} > {limit}"))
    big = [line.sku or line.title for line in order.lines if line.quantity > risk.max_line_quantity]
    if big:
        findings.append(Finding("risk_quantity", ", ".join(big)))
    flagged = sorted(set(order.tags or []) & set(risk.hold_tags))
    if flagged:
        findings.append(Finding("risk_flagged", "tag " + ", ".join(flagged)))
    score = _risk_score(order.note_attributes.get(risk.risk_attribute))
    if score is not None and score > risk.max_risk_score:
        findings.append(Finding("risk_flagged", f"score {score:.2f}"))
    return findings


def _risk_score(raw: object) -> float | None:
    """A risk score as 0..1; sources send either 0..1 or 0..100."""
    try:
        score = Decimal(str(raw)) if raw is not None else None
    except InvalidOperation:
        return None
    if score is None or not score.is_finite():
        return None
    return float(score / 100 if score > 1 else score)


def catalog_findings(
    order: Order, products: dict[str, Product], available: dict[str, int]
) -> list[Finding]:
    """Unknown SKUs, and lines the remaining stock cannot cover (goods that ship only)."""
    wanted = demand(order)
    unknown = sorted(sku for sku in wanted if sku not in products)
    unknown += [line.title for line in order.lines
                if not line.sku and not line.gift_card and needs_shipping(line)]
    findings = [Finding("unknown_sku", ", ".join(unknown))] if unknown else []
    short = sorted(
        f"{sku} (want {qty}, have {max(available[sku], 0)})"
        for sku, qty in wanted.items()
        if sku in products and qty > available[sku]
    )
    if short:
        findings.append(Finding("out_of_stock", ", ".join(short)))
    return findings


def demand(order: Order) -> Counter[str]:
    """Units wanted per SKU (gift cards, SKU-less and digital lines need no stock)."""
    wanted: Counter[str] = Counter()
    for line in order.lines:
        if line.sku and not line.gift_card and needs_shipping(line) and line.kept_quantity:
            wanted[line.sku] += line.kept_quantity
    return wanted


# --- the stage --------------------------------------------------------------------------------


def shipping_findings(order: Order, rules: VerificationConfig) -> list[Finding]:
    """The address rules, when something is to be shipped."""
    return address_findings(order.shipping_address or {}, rules) if ships(order) else []


def intake_findings(session: Session, orders: Sequence[Order]) -> dict[int, list[Finding]]:
    """What intake found in each order's current version (one query for the batch)."""
    query = select(OrderEvent.order_id, OrderEvent.detail).where(
        OrderEvent.order_id.in_([o.id for o in orders]), OrderEvent.kind == INTAKE_FINDING)
    current = {o.id: o.payload_hash for o in orders}
    found: dict[int, list[Finding]] = {}
    for order_id, detail in session.execute(query):
        if detail.get("payload_hash") == current[order_id]:
            found[order_id] = [_finding(text) for text in detail.get("findings", [])]
    return found


def _finding(text: str) -> Finding:
    code, _, detail = text.partition(":")
    return Finding(code.strip(), detail.strip())


def assess(
    order: Order,
    rules: VerificationConfig,
    products: dict[str, Product],
    available: dict[str, int],
    found_at_intake: Sequence[Finding] = (),
) -> Transition:
    """The order's verification outcome; reserves its stock in `available` when it passes."""
    cancelled = cancellation(order, rules)
    if cancelled:
        return Transition(order.id, CANCELLED, reason=str(cancelled))
    findings = (
        list(found_at_intake)
        + payment_findings(order, rules)
        + email_findings(order, rules)
        + shipping_findings(order, rules)
        + catalog_findings(order, products, available)
        + currency_findings(order, rules)
        + risk_findings(order, rules)
    )
    if findings:
        codes = [f.code for f in findings]
        reason = format_reasons(findings)
        return Transition(order.id, ON_HOLD, reason=reason, detail={"codes": codes})
    for sku, qty in demand(order).items():
        available[sku] -= qty
    return Transition(order.id, VERIFIED)


def load_products(session: Session, orders: Sequence[Order]) -> dict[str, Product]:
    skus = {line.sku for order in orders for line in order.lines if line.sku}
    if not skus:
        return {}
    query = select(Product).where(Product.sku.in_(skus)).order_by(Product.sku)
    if is_postgres(session):
        # Concurrent batches must not both reserve the last unit; sku order avoids deadlocks.
        query = query.with_for_update(of=Product)
    return {p.sku: p for p in session.scalars(query)}


def verify(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime) -> StageResult:
    """Verify a batch of received orders: verified, on hold (with reasons) or cancelled."""
    rules = rt.config.verification
    orders = claim_orders(session, order_ids, RECEIVED)
    products = load_products(session, orders)
    available = {sku: p.stock - p.reserved for sku, p in products.items()}
    found = intake_findings(session, orders) if orders else {}
    transitions = [assess(order, rules, products, available, found.get(order.id, ()))
                   for order in orders]
    verified = [t.order_id for t in transitions if t.to_state == VERIFIED]
    if rules.stock.reserve:
        reserve_stock(session, {o.id: o for o in orders}, verified, now)
    apply_transitions(session, "verify", RECEIVED, transitions, now)
    return _result("verify", transitions, skipped=len(order_ids) - len(orders))


def reserve_stock(
    session: Session, orders: dict[int, Order], order_ids: Sequence[int], now: datetime
) -> None:
    """Reserve the orders' units (one executemany) and mark the orders as holding stock.

    Reservations are kept apart from `stock`, so re-ingesting the catalog feed (which reports
    stock on hand) never wipes them out.
    """
    units: Counter[str] = Counter()
    for order_id in order_ids:
        units.update(demand(orders[order_id]))
    move_reserved(session, units, 1, now)
    if order_ids:
        session.execute(update(Order).where(Order.id.in_(order_ids)).values(stock_reserved=True))


def _result(stage: str, transitions: Sequence[Transition], skipped: int) -> StageResult:
    states = Counter(t.to_state for t in transitions)
    codes = Counter(code for t in transitions for code in t.detail.get("codes", []))
    return StageResult(
        stage=stage,
        advanced=states[VERIFIED],
        held=states[ON_HOLD],
        closed=states[CANCELLED],
        skipped=skipped,
        details=dict(codes),
    )


# --- operator decisions on held orders ----------------------------------------------------------


def release_holds(
    session: Session, order_ids: Sequence[int], now: datetime, actor: str, note: str = ""
) -> list[int]:
    """Approve held orders despite their reasons; their stock is reserved (it may backorder)."""
    orders = claim_orders(session, order_ids, ON_HOLD)
    released = [o.id for o in orders]
    reserve_stock(session, {o.id: o for o in orders}, released, now)
    detail = {"decision": "release", "note": note}
    transitions = [
        Transition(o.id, VERIFIED, detail={**detail, "was": o.hold_reason}) for o in orders
    ]
    apply_transitions(session, "verify", ON_HOLD, transitions, now, actor=actor)
    return released


# Cancelling a held order is a cancellation like any other: tasks/cancellation.cancel_holds.
