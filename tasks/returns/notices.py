"""The customer's mail about a return, at each step: one `return_update` template, by kind.

`return_notice` builds the outbox row (keyed `return:{id}:{kind}`, so each step is told once);
the caller enqueues it with the change that causes it. The context is a snapshot: the RMA, the
lines, the reason's label, what the customer gets back and when, and once approved the
step-by-step instructions (pack with the RMA inside, the label or the address, where to drop
it, by when). Operator notes (`Return.decision_note`) are internal and never shown: a rejection
says what the caller passes as `message`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from tasks.config import Config
from tasks.links import Purpose, link_url
from tasks.messaging.compose import base_context, order_mail
from tasks.returns.policy import long_date, money, reason_of
from tasks.runtime import Runtime
from tasks.states import ReturnStatus
from tasks.store.models import Order, Return

TEMPLATE = "return_update"
KINDS = ("requested", "approved", "rejected", "label_ready", "received", "refunded",
         "exchanged", "kept_with_credit")
HEADLINES = {
    "requested": "we have your request", "approved": "approved, here is how to send it",
    "rejected": "we could not accept it", "label_ready": "your label is ready",
    "received": "we have received your parcel", "refunded": "your refund is on its way",
    "exchanged": "your exchange is on its way", "kept_with_credit": "keep it, with a credit",
}
# A return's status in the customer's words (the returns page, the order page).
STATUS_LABELS = {
    ReturnStatus.REQUESTED: "Waiting for our team to approve it",
    ReturnStatus.APPROVED: "Approved: please send it back",
    ReturnStatus.RECEIVED: "Received: we are checking it",
    ReturnStatus.REFUNDED: "Refunded",
    ReturnStatus.EXCHANGED: "Exchange sent",
    ReturnStatus.REJECTED: "Not accepted",
    ReturnStatus.KEPT_WITH_CREDIT: "Kept, with a credit",
}
# Kinds whose mail repeats how to send the parcel.
SENDING_KINDS = ("approved", "label_ready")


def returns_url(cfg: Config, secret_key: str, order_id: int, now: datetime) -> str:
    """The /returns/{token} page of an order (start a return, or follow one)."""
    return link_url(cfg.store.links_base_url, secret_key, Purpose.RETURNS, order_id, now)


def return_lines(ret: Return, order: Order, exchanges: Mapping[str, str]) -> list[dict]:
    """The returned units as the customer knows them; an exchange names what comes instead."""
    by_id = {line.id: line for line in order.lines}
    shown = []
    for item in ret.lines:
        line = by_id.get(item.order_line_id)
        shown.append({
            "title": line.title if line else "item", "quantity": item.quantity,
            "variant_title": line.variant_title if line else None,
            "exchange_for": exchanges.get(item.exchange_sku or "", item.exchange_sku),
        })
    return shown


def refund_estimate(ret: Return) -> Decimal:
    """Goods less the fees kept back (never below zero)."""
    return max(money(ret.goods_value - ret.restocking_fee - ret.shipping_fee), Decimal("0.00"))


def shown_fee(amount: Decimal | None) -> str | None:
    return str(money(amount)) if amount else None


def label_link(ret: Return, page_url: str) -> str | None:
    """Where the customer gets the label: the carrier's URL, or an archived PDF served from
    the returns page (`/returns/{token}/label/{rma}`); None while there is none."""
    if ret.label_url:
        return ret.label_url
    return f"{page_url}/label/{ret.rma}" if ret.label_ref else None


def instruction_steps(ret: Return, cfg: Config) -> list[str]:
    """What to do with the parcel, step by step."""
    policy = cfg.returns.instructions
    address = policy.address or cfg.store.postal_address
    if ret.label_url or ret.label_ref:
        label = "Print the return label (the link below) and stick it on the parcel."
    elif reason_of(ret.reason, cfg).return_shipping == "customer":
        label = f"Address the parcel to {address} and send it at your own cost."
    else:
        label = "We will e-mail you a prepaid return label; stick it on the parcel."
    steps = [f"Pack the items securely with a note saying your return number {ret.rma}.",
             label, policy.drop_off]
    if ret.return_by:
        steps.append(f"Send it by {long_date(ret.return_by)}.")
    return steps


def return_context(ret: Return, order: Order, kind: str, cfg: Config,
                   exchanges: Mapping[str, str], page_url: str = "") -> dict[str, Any]:
    """The `ret` part of the mail's (and the page's) context; `page_url`: the order's
    returns page (a PDF label is served under it)."""
    return {
        "rma": ret.rma, "status": ret.status, "resolution": ret.resolution,
        "reason_label": reason_of(ret.reason, cfg).label,
        "lines": return_lines(ret, order, exchanges),
        # Fees are None when nothing is kept back, so a template can just ask `if`.
        "goods_value": str(ret.goods_value), "restocking_fee": shown_fee(ret.restocking_fee),
        "shipping_fee": shown_fee(ret.shipping_fee), "refund_estimate": str(refund_estimate(ret)),
        "refund_business_days": cfg.returns.instructions.refund_business_days,
        "return_by": ret.return_by.isoformat() if ret.return_by else None,
        "label_url": label_link(ret, page_url),
        "refund_amount": None if ret.refund_amount is None else str(ret.refund_amount),
        "credit_amount": None if ret.credit_amount is None else str(ret.credit_amount),
        "steps": instruction_steps(ret, cfg) if kind in SENDING_KINDS else [],
    }


def return_notice(ret: Return, order: Order, kind: str, rt: Runtime, now: datetime,
                  message: str | None = None, exchanges: Mapping[str, str] | None = None
                  ) -> dict[str, Any]:
    """The outbox row telling the customer about `ret` at step `kind` (one of KINDS), keyed
    `return:{id}:{kind}`. `message`: the customer-facing reason of a rejection (or any note
    for the customer); `exchanges`: sku → title of the variants coming instead."""
    if kind not in KINDS:
        raise ValueError(f"unknown return notice kind {kind!r}; one of {', '.join(KINDS)}")
    cfg = rt.config
    page_url = returns_url(cfg, rt.settings.secret_key, order.id, now)
    context = {
        **base_context(order, cfg), "kind": kind, "headline": HEADLINES[kind],
        "ret": return_context(ret, order, kind, cfg, exchanges or {}, page_url),
        "message": message, "returns_url": page_url,
    }
    return order_mail(cfg, order, "return", TEMPLATE, context, now,
                      key=f"return:{ret.id}:{kind}")
