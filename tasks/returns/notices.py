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
from tasks.i18n import N_
from tasks.links import Purpose, link_url
from tasks.messaging.compose import base_context, locale_of, order_mail
from tasks.messaging.money import format_day
from tasks.returns.policy import money, reason_of
from tasks.runtime import Runtime
from tasks.states import ReturnStatus
from tasks.store.models import Order, Return
from tasks.storefront.words import Say, speaker

TEMPLATE = "return_update"
KINDS = ("requested", "approved", "rejected", "label_ready", "received", "refunded",
         "exchanged", "kept_with_credit")
# What the mail's subject and heading say after "Your return R-1234:", by kind.
HEADLINES = {
    # Translators: this and the other return headlines follow "Your return R-1234:".
    "requested": N_("we have your request"), "approved": N_("approved, here is how to send it"),
    "rejected": N_("we could not accept it"), "label_ready": N_("your label is ready"),
    "received": N_("we have received your parcel"), "refunded": N_("your refund is on its way"),
    "exchanged": N_("your exchange is on its way"),
    "kept_with_credit": N_("keep it, with a credit"),
}
# A return's status in the customer's words (the returns page, the order page).
STATUS_LABELS = {
    ReturnStatus.REQUESTED: N_("Waiting for our team to approve it"),
    ReturnStatus.APPROVED: N_("Approved: please send it back"),
    ReturnStatus.RECEIVED: N_("Received: we are checking it"),
    ReturnStatus.REFUNDED: N_("Refunded"),
    ReturnStatus.EXCHANGED: N_("Exchange sent"),
    ReturnStatus.REJECTED: N_("Not accepted"),
    ReturnStatus.KEPT_WITH_CREDIT: N_("Kept, with a credit"),
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


def status_label(status: str, say: Say) -> str:
    """A return's status as the customer reads it (STATUS_LABELS), in their language."""
    return say(STATUS_LABELS[status]) if status in STATUS_LABELS else status


def instruction_steps(ret: Return, cfg: Config, say: Say, locale: str) -> list[str]:
    """What to do with the parcel, step by step, in the customer's language."""
    policy = cfg.returns.instructions
    address = policy.address or cfg.store.postal_address
    if ret.label_url or ret.label_ref:
        label = say(N_("Print the return label (the link below) and stick it on the parcel."))
    elif reason_of(ret.reason, cfg).return_shipping == "customer":
        label = say(N_("Address the parcel to %(address)s and send it at your own cost."),
                    address=address)
    else:
        label = say(N_("We will e-mail you a prepaid return label; stick it on the parcel."))
    steps = [say(N_("Pack the items securely with a note saying your return number %(rma)s."),
                 rma=ret.rma), label, say(policy.drop_off)]
    if ret.return_by:
        steps.append(say(N_("Send it by %(day)s."), day=format_day(ret.return_by, locale)))
    return steps


def return_context(ret: Return, order: Order, kind: str, cfg: Config,
                   exchanges: Mapping[str, str], locale: str,
                   page_url: str = "") -> dict[str, Any]:
    """The `ret` part of the mail's (and the page's) context, its words in `locale`;
    `page_url`: the order's returns page (a PDF label is served under it)."""
    say = speaker(cfg, locale)
    return {
        "rma": ret.rma, "status": ret.status, "resolution": ret.resolution,
        "reason_label": say(reason_of(ret.reason, cfg).label),
        "lines": return_lines(ret, order, exchanges),
        # Fees are None when nothing is kept back, so a template can just ask `if`.
        "goods_value": str(ret.goods_value), "restocking_fee": shown_fee(ret.restocking_fee),
        "shipping_fee": shown_fee(ret.shipping_fee), "refund_estimate": str(refund_estimate(ret)),
        "refund_business_days": cfg.returns.instructions.refund_business_days,
        "return_by": ret.return_by.isoformat() if ret.return_by else None,
        "label_url": label_link(ret, page_url),
        "refund_amount": None if ret.refund_amount is None else str(ret.refund_amount),
        "credit_amount": None if ret.credit_amount is None else str(ret.credit_amount),
        "steps": instruction_steps(ret, cfg, say, locale) if kind in SENDING_KINDS else [],
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
    locale = locale_of(order, cfg)
    page_url = returns_url(cfg, rt.settings.secret_key, order.id, now)
    context = {  # the snapshot keeps its words: a resend says what the first mail said
        **base_context(order, cfg), "kind": kind,
        "headline": speaker(cfg, locale)(HEADLINES[kind]),
        "ret": return_context(ret, order, kind, cfg, exchanges or {}, locale, page_url),
        "message": message, "returns_url": page_url,
    }
    return order_mail(cfg, order, "return", TEMPLATE, context, now,
                      key=f"return:{ret.id}:{kind}")
