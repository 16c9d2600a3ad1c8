"""An operator's (or Shopify's) decisions on returns: approve, reject, keep with credit, a
return label, and receipt of the parcel.

Each is a compare-and-set on `Return.status` over locked rows, so deciding twice (or two
operators at once) changes nothing the second time; each step is a timeline event (kind
"return", with who decided and what) and the customer's mail (tasks/returns/notices.py, one per
return and kind, by effect key).

- approve: requested → approved; the customer gets the step-by-step instructions.
- reject: requested → rejected; `message` is the customer-facing reason (required), kept in
  `decision_note` and shown to the customer; the operator's own note goes to the timeline.
- keep with credit: requested → kept_with_credit; the customer keeps the goods and gets
  `keep_with_credit_percent` of their value as store credit. journeys records the credit and
  tells the customer; the store applies it (journeys moves no money).
- label: an https URL or a PDF (archived) on an approved return, never invented; the customer
  is told once per label (the mail's key holds a hash of the URL or archive ref).
- receive: approved → received, then at once refunded or exchanged (tasks/returns/receipt.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from tasks.messaging.compose import mail_domain
from tasks.messaging.outbox import enqueue, message_id_for
from tasks.returns.notices import return_notice
from tasks.returns.receipt import (
    CENT,
    event,
    locked_returns,
    move,
    notify,
    orders_of,
    settle,
)
from tasks.runtime import Runtime
from tasks.states import ReturnStatus
from tasks.store.journal import record_events
from tasks.store.models import Return

REQUESTED, APPROVED = ReturnStatus.REQUESTED, ReturnStatus.APPROVED
MAX_LABEL_BYTES = 10 * 1024 * 1024
MAX_URL = 1000  # Return.label_url
MAX_MESSAGE = 500  # a customer-facing reason, like Shopify's decline note


class DecisionRefused(ValueError):
    """A decision that cannot apply (a bad label, an empty reason); one line for the user."""


def decide(session: Session, return_ids: Sequence[int], to_status: str, decision: str,
           actor: str, note: str, now: datetime, values: dict[int, dict] | None = None
           ) -> list[Return]:
    """requested → `to_status` for the returns still requested; the timeline says who/why."""
    returns = locked_returns(session, return_ids)
    base = {"decided_at": now, "decided_by": actor[:100]}
    moved = move(session, [(r, {**base, **(values or {}).get(r.id, {})}) for r in returns],
                 REQUESTED, to_status, now)
    record_events(session, [event(r, decision, actor, now, **({"note": note} if note else {}))
                            for r in moved])
    return moved


def approve_returns(session: Session, return_ids: Sequence[int], actor: str, note: str,
                    now: datetime, rt: Runtime) -> list[int]:
    """Approve requested returns; the customer gets the instructions. Ids approved now."""
    moved = decide(session, return_ids, APPROVED, "approved", actor, note, now,
                   {rid: {"decision_note": note or None} for rid in return_ids})
    notify(session, moved, "approved", rt, now)
    return [r.id for r in moved]


def reject_returns(session: Session, return_ids: Sequence[int], actor: str, message: str,
                   now: datetime, rt: Runtime) -> list[int]:
    """Reject requested returns with `message`, the reason the customer reads."""
    message = " ".join((message or "").split())
    if not message:
        raise DecisionRefused("a rejection needs a reason for the customer (--message)")
    if len(message) > MAX_MESSAGE:
        raise DecisionRefused(f"the reason is {len(message)} characters; at most {MAX_MESSAGE}")
    moved = decide(session, return_ids, ReturnStatus.REJECTED, "rejected", actor, message, now,
                   {rid: {"decision_note": message} for rid in return_ids})
    notify(session, moved, "rejected", rt, now, message=message)
    return [r.id for r in moved]


def keep_with_credit(session: Session, return_ids: Sequence[int], actor: str, note: str,
                     now: datetime, rt: Runtime) -> list[int]:
    """The customer keeps the goods with a share of their value as store credit."""
    share = rt.config.returns.keep_with_credit_percent
    credits = {r.id: {"credit_amount": credit_amount(r.goods_value, share),
                      "decision_note": note or None}
               for r in locked_returns(session, return_ids)}
    moved = decide(session, return_ids, ReturnStatus.KEPT_WITH_CREDIT, "kept_with_credit",
                   actor, note, now, credits)
    notify(session, moved, "kept_with_credit", rt, now)
    return [r.id for r in moved]


def credit_amount(goods_value: Decimal, percent: Decimal) -> Decimal:
    return (goods_value * percent / 100).quantize(CENT)


# ---------------------------------------------------------------- labels


def checked_url(url: str) -> str:
    """An absolute https URL of one line, as a carrier or label service gives it."""
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise DecisionRefused("the label URL must be an https:// address")
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise DecisionRefused(f"the label URL must be one line of at most {MAX_URL} characters")
    return url


def checked_pdf(pdf: bytes) -> bytes:
    if not pdf.startswith(b"%PDF-"):
        raise DecisionRefused("the label file is not a PDF (it does not start with %PDF-)")
    if len(pdf) > MAX_LABEL_BYTES:
        raise DecisionRefused(f"the label PDF is larger than {MAX_LABEL_BYTES // 1024**2} MB")
    return pdf


def label_key(ret: Return, pdf: bytes) -> str:
    """Content-addressed, outside the prefixes the orphan reconcile sweeps (documents/ ...):
    the row commits after the PUT, and the same PDF again is the same object."""
    return f"returns/labels/{ret.rma}/{hashlib.sha256(pdf).hexdigest()[:16]}.pdf"


def attach_label(session: Session, return_id: int, now: datetime, rt: Runtime, actor: str,
                 url: str | None = None, pdf: bytes | None = None) -> bool:
    """Store the return label of an approved return; True when it is new (customer told)."""
    if (url is None) == (pdf is None):
        raise DecisionRefused("give the label as a URL or as a PDF, one of the two")
    url = checked_url(url) if url is not None else None
    pdf = checked_pdf(pdf) if pdf is not None else None
    [ret] = locked_returns(session, [return_id]) or [None]
    if ret is None:
        raise DecisionRefused(f"no return {return_id}")
    if ret.status != APPROVED:
        raise DecisionRefused(f"return {ret.rma} is {ret.status}: a label fits an approved one")
    ref = rt.archive.put(label_key(ret, pdf), pdf, "application/pdf") if pdf else None
    if (url and url == ret.label_url) or (ref and ref == ret.label_ref):
        return False
    values = {"label_url": url, "label_ref": None} if url else {"label_url": None,
                                                                "label_ref": ref}  # latest wins
    move(session, [(ret, values)], APPROVED, APPROVED, now)
    record_events(session, [event(ret, "label", actor, now, label="url" if url else "pdf")])
    enqueue(session, [label_notice(ret, url or ref, rt, now, session)], now)
    return True


def label_notice(ret: Return, label: str, rt: Runtime, now: datetime, session: Session) -> dict:
    """The "label ready" mail, keyed per label: a replaced label is announced again."""
    order = orders_of(session, [ret])[ret.order_id]
    row = return_notice(ret, order, "label_ready", rt, now)
    key = f"return:{ret.id}:label_ready:{hashlib.sha256(label.encode()).hexdigest()[:12]}"
    return {**row, "effect_key": key, "message_id": message_id_for(key, mail_domain(rt.config))}


# ---------------------------------------------------------------- receipt


def receive_returns(session: Session, return_ids: Sequence[int], now: datetime, rt: Runtime,
                    actor: str) -> dict[str, int]:
    """The parcels arrived: approved → received, then refunded or exchanged at once."""
    returns = locked_returns(session, return_ids)
    moved = move(session, [(r, {"received_at": now}) for r in returns], APPROVED,
                 ReturnStatus.RECEIVED, now)
    record_events(session, [event(r, "received", actor, now) for r in moved])
    # Also settles returns received before but not settled (a crash cannot split a
    # transaction, but an older version or a manual fix could leave one received).
    return {"received": len(moved), **settle(session, returns, now, rt)}
