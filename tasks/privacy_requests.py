"""Shopify's mandatory privacy webhooks: customers/data_request, customers/redact, shop/redact.

The edge stores each delivery and acknowledges it; the inbox drain hands the parsed bodies to
the actions below (tasks/inbox.py ACTION_OF_TOPIC) inside its app-database transaction. Each
request becomes an obligation in ``privacy_requests``: received, due (received + 30 days, what
Shopify allows), completed, the export's ref and counts; ``journeys report`` lists the open
ones with their deadlines. No e-mail address is stored: ``subject`` is the keyed hash
(``email_hmac``) erasure uses.

- customers/data_request: one JSON document of everything journeys holds about the customer
  (customer row, orders with lines, shipments and scans, messages with their archive refs,
  loyalty ledger, feedback, service cases, document refs, timeline) is written to
  ``privacy/exports/YYYY/MM/DD/<request id>.json``; the obligation and a ``privacy_export``
  event in each order's timeline say where. An unknown customer gets an export that says
  nothing is held.
- customers/redact: the erasure of tasks/privacy.py for the customer and for the owners of
  ``orders_to_redact``; earlier exports of an erased customer are deleted from the archive.
- shop/redact: the same erasure for every customer, ``SHOP_BATCH`` per drain pass (journeys
  serves one shop per database), then every bundle of the archive is redacted once.

Customers are found by Shopify's customer id (``Customer.external_id``) first, else by e-mail.

Transactions. The database part of an erasure runs in the drain's transaction
(``privacy.erase_records``). The archive part must follow a commit (an old bundle may only be
deleted once nothing committed points at it), so it runs right after the drain commits, in a
session of its own (an ``after_commit`` hook: ``finish_open_requests``), which also closes the
obligations it finishes. Until a redaction's obligation is closed its delivery stays in the
inbox as waiting, so every drain resumes what an archive failure left (the reason is shown).

shop/redact has no config switch. Shopify requires the data gone after an uninstall, the body
is authenticated by the edge's HMAC check, and a switch that is off breaks that promise
silently while one that is on adds nothing. The guard instead: a body whose ``shop_domain``
differs from the shop the delivery came from (``X-Shopify-Shop-Domain``) is ignored, with the
reason; the obligation and its progress are in the report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, event, func, or_, select
from sqlalchemy.orm import Session

from tasks.archive import (
    ArchiveError,
    ArtifactStore,
    bundle_members,
    split_member_ref,
)
from tasks.deliveries import Body, Outcome
from tasks.inbox import IGNORED, PROCESSED
from tasks.messaging.governor import email_hmac
from tasks.messaging.render import one_line
from tasks.messaging.unsubscribe import normalise
from tasks.privacy import (
    ErasureError,
    ErasureOutcome,
    erase_records,
    finish_archives,
    has_erasure,
)
from tasks.privacy_archive import delete_stale, lock_erasures, redaction_note, replace_bundle
from tasks.privacy_scrub import pseudonym_for, update_rows
from tasks.runtime import Runtime
from tasks.store.db import session_factory
from tasks.store.journal import insert_ignoring_duplicates, record_events
from tasks.store.models import (
    Artifact,
    Customer,
    Erasure,
    FeedbackResponse,
    LoyaltyEntry,
    Message,
    Order,
    OrderEvent,
    OrderLine,
    PrivacyRequest,
    ServiceCase,
    Shipment,
    TrackingEvent,
)

DATA_REQUEST, CUSTOMER_REDACT, SHOP_REDACT = "customers/data_request", "customers/redact", \
    "shop/redact"
DEADLINE = timedelta(days=30)  # Shopify: complete the action within 30 days of the request
ACTOR = "shopify privacy webhook"
SHOP_BATCH = 500  # customers erased per drain pass of a shop/redact
WAITING = "waiting"  # the drain's outcome for a row to take again at the next drain
EXPORT_FORMAT = "journeys privacy export v1"
REQUEST_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # safe in an archive key
# Columns an export leaves out: our bookkeeping, and render contexts (signed link tokens).
NOT_EXPORTED = {"orders": {"payload_hash", "previous_hashes"}, "messages": {"context"}}
_HOOKED = "privacy_requests_after_commit"


class BadBody(ValueError):
    """A body journeys cannot act on; the message says why (it becomes the inbox reason)."""


@dataclass(frozen=True)
class Request:
    """One privacy request as its body gives it; the e-mail is held in memory only."""

    body: Body
    kind: str
    shop_id: str | None
    shop_domain: str | None
    request_id: str | None = None
    customer_id: str | None = None
    email: str | None = None
    order_ids: tuple[str, ...] = ()
    subject: str | None = None

    @property
    def key(self) -> str:
        """The obligation's effect key: a redrained delivery is the same request."""
        shop = (self.shop_id or self.shop_domain or "?")[:60]
        if self.kind == DATA_REQUEST:
            return f"{self.kind}:{shop}:{self.request_id}"
        who = self.customer_id or self.subject or "shop"
        return f"{self.kind}:{shop}:{who}:{self.body.received_at:%Y%m%dT%H%M%S%f}"


# --- the actions (tasks/inbox.py ACTION_OF_TOPIC) ---------------------------------------------


def export_customer_data(session: Session, bodies: list[Body], now: datetime, rt: Runtime
                         ) -> dict[int, Outcome]:
    """customers/data_request: a JSON export per request, into the archive."""
    requests, outcomes = parse_all(bodies, DATA_REQUEST, rt.settings.secret_key)
    obligations = record_obligations(session, requests, now)
    todo = settled(requests, obligations, outcomes)
    found = find_customers(session, todo)
    held = load_held(session, {cid for ids in found.values() for cid in ids})
    for request in todo:
        document = export_document(request, held, found[request.key])
        try:
            ref = put_export(rt.archive, export_key(request), document)
        except ArchiveError as exc:
            outcomes[request.body.row_id] = (WAITING, one_line(f"archive unavailable: {exc}"))
            continue
        note = complete_export(session, obligations[request.key], found[request.key], ref,
                               document, now)
        outcomes[request.body.row_id] = (PROCESSED, note)
    return outcomes


def redact_customers(session: Session, bodies: list[Body], now: datetime, rt: Runtime
                     ) -> dict[int, Outcome]:
    """customers/redact: erase the customer (database now, archive right after the commit)."""
    requests, outcomes = parse_all(bodies, CUSTOMER_REDACT, rt.settings.secret_key)
    obligations = record_obligations(session, requests, now)
    todo = settled(requests, obligations, outcomes)
    if not todo:
        return outcomes
    lock_erasures(session)
    found = find_customers(session, todo)
    for request in todo:  # customers an earlier pass erased are no longer found: add them
        found[request.key] = sorted(set(found[request.key])
                                    | set(obligations[request.key].customer_ids))
    erased = erased_customers(session, {cid for ids in found.values() for cid in ids})
    for request in todo:
        obligation, ids = obligations[request.key], found[request.key]
        if not ids:
            outcomes[request.body.row_id] = (PROCESSED, close_unknown(session, request,
                                                                      obligation, now))
            continue
        fresh = [cid for cid in ids if cid not in erased]
        if fresh or ids != obligation.customer_ids:
            outcome = erase_customers(session, fresh, now, rt)
            erased |= set(fresh)
            record_progress(session, obligation, ids, outcome, "erased in the database")
        outcomes[request.body.row_id] = (WAITING, progress_reason(obligation, fresh))
    finish_after_commit(session, now, rt)
    return outcomes


def redact_shop(session: Session, bodies: list[Body], now: datetime, rt: Runtime
                ) -> dict[int, Outcome]:
    """shop/redact: erase every customer, SHOP_BATCH per drain pass, then the archive."""
    requests, outcomes = parse_all(bodies, SHOP_REDACT, rt.settings.secret_key)
    obligations = record_obligations(session, requests, now)
    todo = settled(requests, obligations, outcomes)
    if not todo:
        return outcomes
    lock_erasures(session)
    batch = unerased_customers(session, SHOP_BATCH)
    outcome = erase_customers(session, batch, now, rt)
    left = len(unerased_customers(session, 1))
    for request in todo:
        obligation = obligations[request.key]
        record_progress(session, obligation, [], outcome, "erasing every customer")
        reason = (f"shop erasure under way: {len(batch)} customers erased in this pass, more "
                  "left" if left else "every customer erased in the database; archive next")
        outcomes[request.body.row_id] = (WAITING, reason)
    finish_after_commit(session, now, rt)
    return outcomes


# --- bodies ---------------------------------------------------------------------------------


def parse_all(bodies: list[Body], kind: str, secret_key: str
              ) -> tuple[list[Request], dict[int, Outcome]]:
    """Requests to act on, and an `ignored` outcome (with why) for each body that is not one."""
    requests, outcomes = [], {}
    for body in bodies:
        try:
            requests.append(parse(body, kind, secret_key))
        except BadBody as exc:
            outcomes[body.row_id] = (IGNORED, f"{kind}: {exc}"[:500])
    return requests, outcomes


def parse(body: Body, kind: str, secret_key: str) -> Request:
    data = body.data
    shop_domain = _text(data.get("shop_domain"), "shop_domain")
    if body.shop and shop_domain and shop_domain.lower() != body.shop.lower():
        raise BadBody(f"shop_domain {shop_domain} is not the shop that sent it ({body.shop})")
    shop = {"body": body, "kind": kind, "shop_id": ident(data.get("shop_id"), "shop_id"),
            "shop_domain": shop_domain or body.shop}
    if kind == SHOP_REDACT:
        return Request(**shop)
    return Request(**shop, **customer_fields(data, kind, secret_key))


def customer_fields(data: dict[str, Any], kind: str, secret_key: str) -> dict[str, Any]:
    customer = data.get("customer")
    if not isinstance(customer, dict):
        raise BadBody("no customer object")
    customer_id = ident(customer.get("id"), "customer.id")
    email = _text(customer.get("email"), "customer.email")
    email = normalise(email) if email else None
    if not customer_id and not email:
        raise BadBody("no customer id and no e-mail")
    fields = {"customer_id": customer_id, "email": email,
              "subject": email_hmac(email, secret_key) if email else None,
              "order_ids": order_list(data, "orders_requested" if kind == DATA_REQUEST
                                      else "orders_to_redact")}
    if kind == DATA_REQUEST:
        fields["request_id"] = request_id(data)
    return fields


def request_id(data: dict[str, Any]) -> str:
    value = ident((data.get("data_request") or {}).get("id")
                  if isinstance(data.get("data_request"), dict) else None, "data_request.id")
    if value is None or not REQUEST_ID.match(value):
        raise BadBody("no usable data_request.id")
    return value


def order_list(data: dict[str, Any], name: str) -> tuple[str, ...]:
    values = data.get(name) or []
    if not isinstance(values, list):
        raise BadBody(f"{name} is not a list")
    return tuple(v for v in (ident(value, name) for value in values) if v)


def ident(value: Any, name: str) -> str | None:
    """An id as Shopify sends it (a number, or a string); None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or len(str(value)) > 64:
        raise BadBody(f"{name} is not an id")
    return str(value).strip() or None


def _text(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BadBody(f"{name} is not text")
    return value.strip() if value and value.strip() else None


# --- obligations ----------------------------------------------------------------------------


def record_obligations(session: Session, requests: list[Request], now: datetime
                       ) -> dict[str, Any]:
    """Insert each request's obligation once; returns request key → its row."""
    if not requests:
        return {}
    insert_ignoring_duplicates(session, PrivacyRequest, [
        {"request_key": r.key[:200], "kind": r.kind, "shop_domain": r.shop_domain,
         "shopify_request_id": r.request_id, "shopify_customer_id": r.customer_id,
         "subject": r.subject, "customer_ids": [], "received_at": r.body.received_at,
         "due_at": r.body.received_at + DEADLINE, "completed_at": None, "export_ref": None,
         "counts": {}, "note": "received"} for r in requests
    ], ["request_key"])
    table = PrivacyRequest.__table__
    rows = session.execute(select(table).where(
        table.c.request_key.in_([r.key[:200] for r in requests])))
    by_key = {row.request_key: row for row in rows}
    return {r.key: by_key[r.key[:200]] for r in requests}


def settled(requests: list[Request], obligations: dict[str, Any],
            outcomes: dict[int, Outcome]) -> list[Request]:
    """Requests still open; a finished one (a redrained delivery) is processed, as it was."""
    todo = []
    for request in requests:
        obligation = obligations[request.key]
        if obligation.completed_at is None:
            todo.append(request)
        else:
            outcomes[request.body.row_id] = (PROCESSED, obligation.note)
    return todo


def update_obligation(session: Session, obligation_id: int, **values: Any) -> None:
    update_rows(session, PrivacyRequest.__table__, [{"id": obligation_id, **values}])


def close_unknown(session: Session, request: Request, obligation: Any, now: datetime) -> str:
    """Nothing held for this customer (never known, or erased before): done at once."""
    erased = request.subject and has_erasure(session, request.subject)
    note = ("already erased: nothing held" if erased else "no such customer: nothing held")
    update_obligation(session, obligation.id, completed_at=now, note=note)
    return note


def record_progress(session: Session, obligation: Any, customer_ids: list[int],
                    outcome: ErasureOutcome, note: str) -> None:
    counts = dict(obligation.counts or {})
    for name, value in outcome.as_dict().items():
        if isinstance(value, int) and not isinstance(value, bool):
            counts[name] = counts.get(name, 0) + value
    update_obligation(session, obligation.id, customer_ids=customer_ids, counts=counts,
                      note=note)


def progress_reason(obligation: Any, fresh: list[int]) -> str:
    if fresh:
        return f"{len(fresh)} customers erased in the database; archive next"
    return (obligation.note or "archive next")[:500]


# --- finding customers ------------------------------------------------------------------------


def find_customers(session: Session, requests: list[Request]) -> dict[str, list[int]]:
    """Request key → our customer ids: by Shopify's id, else by e-mail; plus the owners of
    the orders the request lists. Three queries for the whole batch."""
    by_id = grouped_ids(session, Customer.external_id, Customer.id,
                        {r.customer_id for r in requests if r.customer_id})
    by_email = grouped_ids(session, func.lower(Customer.email), Customer.id,
                           {r.email for r in requests if r.email})
    owners = grouped_ids(session, Order.external_id, Order.customer_id,
                         {o for r in requests for o in r.order_ids}, Order.source == "shopify")
    found = {}
    for r in requests:
        mine = by_id.get(r.customer_id, set()) or by_email.get(r.email, set())
        listed = {cid for o in r.order_ids for cid in owners.get(o, set())}
        found[r.key] = sorted(mine | listed)
    return found


def grouped_ids(session: Session, key: Any, column: Any, values: set[str], *where: Any
                ) -> dict[str, set[int]]:
    """key value → the `column` ids of the rows whose key is one of `values`."""
    if not values:
        return {}
    grouped: dict[str, set[int]] = {}
    query = select(key, column).where(key.in_(sorted(values)), *where)
    for value, found in session.execute(query):
        grouped.setdefault(value, set()).add(found)
    return grouped


def erased_customers(session: Session, customer_ids: set[int]) -> set[int]:
    query = select(Erasure.customer_id).where(Erasure.customer_id.in_(sorted(customer_ids)))
    return set(session.scalars(query)) if customer_ids else set()


def unerased_customers(session: Session, limit: int) -> list[int]:
    query = (select(Customer.id).where(Customer.id.not_in(select(Erasure.customer_id)))
             .order_by(Customer.id).limit(limit))
    return list(session.scalars(query))


# --- erasing ----------------------------------------------------------------------------------


def erase_customers(session: Session, customer_ids: list[int], now: datetime, rt: Runtime
                    ) -> ErasureOutcome:
    """The database step of privacy.erase_customer for each, in the caller's transaction.

    A customer without an e-mail is erased under its pseudonym (the erasure's subject is
    then the pseudonym's keyed hash)."""
    outcome = ErasureOutcome()
    emails = dict(session.execute(select(Customer.id, Customer.email)
                                  .where(Customer.id.in_(customer_ids))).all())
    for cid in customer_ids:
        address = normalise(emails[cid]) if emails.get(cid) else pseudonym_for(cid)
        subject = email_hmac(address, rt.settings.secret_key)
        erase_records(session, cid, address, subject, now, rt, ACTOR, outcome)
    return outcome


def finish_after_commit(session: Session, now: datetime, rt: Runtime) -> None:
    """Once the drain's transaction commits, the archive work (in a session of its own)."""
    if session.info.get(_HOOKED):
        return
    session.info[_HOOKED] = True

    def finish(committed: Session) -> None:
        committed.info.pop(_HOOKED, None)
        finish_open_requests(committed.get_bind(), now, rt)

    event.listen(session, "after_commit", finish, once=True)


def finish_open_requests(engine: Engine, now: datetime, rt: Runtime) -> None:
    """Archive work of every open erasure; exports of erased customers deleted; redactions
    with nothing left closed. Commits as it goes; an archive failure is noted, not raised."""
    with session_factory(engine)() as session:
        try:
            if open_requests(session, SHOP_REDACT):
                redact_every_bundle(session, rt.archive)
            for subject in open_erasure_subjects(session):
                finish_archives(session, subject, now, rt, ErasureOutcome())
            delete_erased_exports(session, rt.archive)
        except (ArchiveError, ErasureError) as exc:
            session.rollback()
            note_open_redactions(session, one_line(
                f"archive not finished, resumed at the next drain: {exc}"))
            return
        close_finished_redactions(session, now)


def open_requests(session: Session, kind: str) -> list[Any]:
    table = PrivacyRequest.__table__
    return list(session.execute(select(table).where(
        table.c.kind == kind, table.c.completed_at.is_(None)).order_by(table.c.id)))


def open_erasure_subjects(session: Session) -> list[str]:
    query = select(Erasure.subject).where(Erasure.completed_at.is_(None)).distinct()
    return sorted(session.scalars(query))


def redact_every_bundle(session: Session, store: ArtifactStore) -> None:
    """Shop erasure: each bundle rewritten once with every member redacted, instead of once
    per customer in it (a batch of 1000 orders would otherwise be written 1000 times)."""
    erasure_id = session.scalar(select(func.min(Erasure.id)))
    if erasure_id is None:
        return
    for object_ref in sorted(bundle_refs(session)):
        members = bundle_members(store.get(object_ref), object_ref)
        if any(data != redaction_note(name) for name, data in members.items()):
            replace_bundle(session, erasure_id, object_ref, set(members), members, store)
            delete_stale(session, erasure_id, store, ErasureOutcome())
    session.commit()


def bundle_refs(session: Session) -> set[str]:
    refs = list(session.scalars(select(Artifact.ref)))
    refs += session.scalars(select(Message.artifact_ref).where(Message.artifact_ref.is_not(None)))
    found = {split_member_ref(ref) for ref in refs}
    return {object_ref for object_ref, member in found if member and "://" in object_ref}


def delete_erased_exports(session: Session, store: ArtifactStore) -> None:
    """A data export holding a customer since erased is deleted (the object first)."""
    table = PrivacyRequest.__table__
    erased = set(session.scalars(select(Erasure.customer_id)))
    rows = session.execute(select(table.c.id, table.c.customer_ids, table.c.export_ref).where(
        table.c.kind == DATA_REQUEST, table.c.export_ref.is_not(None))).all()
    for row in rows:
        if erased & set(row.customer_ids or []):
            store.delete(row.export_ref)
            update_obligation(session, row.id, export_ref=None,
                              note="export deleted: the customer was erased since")
            session.commit()
    session.commit()


def note_open_redactions(session: Session, note: str) -> None:
    table = PrivacyRequest.__table__
    ids = session.scalars(select(table.c.id).where(
        table.c.kind.in_((CUSTOMER_REDACT, SHOP_REDACT)), table.c.completed_at.is_(None)))
    update_rows(session, table, [{"id": i, "note": note[:500]} for i in ids])
    session.commit()


def close_finished_redactions(session: Session, now: datetime) -> None:
    """Close each open redaction none of whose customers has archive work left."""
    unfinished = set(session.scalars(select(Erasure.customer_id)
                                     .where(Erasure.completed_at.is_(None))))
    shop_done = not unfinished and not unerased_customers(session, 1)
    closing = []
    for row in [*open_requests(session, CUSTOMER_REDACT), *open_requests(session, SHOP_REDACT)]:
        ids = set(row.customer_ids or [])
        done = shop_done if row.kind == SHOP_REDACT else bool(ids) and not ids & unfinished
        if done:
            closing.append({"id": row.id, "completed_at": now,
                            "note": f"erased: {(row.counts or {}).get('customers', 0)} "
                                    f"customers, {(row.counts or {}).get('orders', 0)} orders"})
    update_rows(session, PrivacyRequest.__table__, closing)
    session.commit()


# --- the data export --------------------------------------------------------------------------


@dataclass
class Held:
    """Everything journeys holds about a set of customers, loaded in one query per table."""

    customers: dict[int, dict[str, Any]]
    orders: list[dict[str, Any]]
    by_order: dict[str, dict[int, list[dict[str, Any]]]]  # table → order id → rows
    messages: list[dict[str, Any]]
    ledger: list[dict[str, Any]]


def load_held(session: Session, customer_ids: set[int]) -> Held:
    customer_ids = sorted(customer_ids)
    customers = {r["id"]: r for r in rows_of(session, Customer, Customer.id.in_(customer_ids))}
    emails = sorted({c["email"].lower() for c in customers.values() if c["email"]})
    orders = rows_of(session, Order, or_(Order.customer_id.in_(customer_ids),
                                         func.lower(Order.email).in_(emails)))
    order_ids = [o["id"] for o in orders]
    shipments = rows_of(session, Shipment, Shipment.order_id.in_(order_ids))
    scans = group(rows_of(session, TrackingEvent, TrackingEvent.shipment_id.in_(
        [s["id"] for s in shipments])), "shipment_id")
    for shipment in shipments:
        shipment["tracking_events"] = scans.get(shipment["id"], [])
    by_order = {"lines": OrderLine, "feedback": FeedbackResponse, "service_cases": ServiceCase,
                "documents": Artifact, "timeline": OrderEvent}
    grouped = {name: group(rows_of(session, model, model.order_id.in_(order_ids)), "order_id")
               for name, model in by_order.items()}
    grouped["shipments"] = group(shipments, "order_id")
    messages = rows_of(session, Message, or_(Message.customer_id.in_(customer_ids),
                                             Message.order_id.in_(order_ids)))
    ledger = rows_of(session, LoyaltyEntry, LoyaltyEntry.customer_id.in_(customer_ids))
    return Held(customers, orders, grouped, messages, ledger)


def rows_of(session: Session, model: Any, where: Any) -> list[dict[str, Any]]:
    """The matching rows as plain dicts, by id, without the columns exports leave out."""
    table = model.__table__
    skip = NOT_EXPORTED.get(table.name, set())
    rows = session.execute(select(table).where(where).order_by(table.c.id)).mappings()
    return [{k: v for k, v in row.items() if k not in skip} for row in rows]


def group(rows: list[dict[str, Any]], column: str) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row[column], []).append(row)
    return grouped


def export_document(request: Request, held: Held, customer_ids: list[int]) -> dict[str, Any]:
    """The request (ids only) and each customer found with everything attached to them."""
    return {"format": EXPORT_FORMAT,
            "request": {"topic": request.kind, "shop_domain": request.shop_domain,
                        "shop_id": request.shop_id, "data_request_id": request.request_id,
                        "customer_id": request.customer_id,
                        "orders_requested": list(request.order_ids),
                        "received_at": request.body.received_at},
            "nothing_held": not customer_ids,
            "customers": [customer_export(held, cid) for cid in customer_ids]}


def customer_export(held: Held, customer_id: int) -> dict[str, Any]:
    customer = held.customers[customer_id]
    orders = [o for o in held.orders if o["customer_id"] == customer_id
              or (customer["email"] and (o["email"] or "").lower() == customer["email"].lower())]
    return {**customer,
            "orders": [order_export(held, order) for order in orders],
            "messages_without_order": [m for m in held.messages if m["order_id"] is None
                                       and m["customer_id"] == customer_id],
            "loyalty_ledger": [e for e in held.ledger if e["customer_id"] == customer_id]}


def order_export(held: Held, order: dict[str, Any]) -> dict[str, Any]:
    attached = {name: rows.get(order["id"], []) for name, rows in held.by_order.items()}
    messages = [m for m in held.messages if m["order_id"] == order["id"]]
    return {**order, **attached, "messages": messages}


def export_key(request: Request) -> str:
    return f"privacy/exports/{request.body.received_at:%Y/%m/%d}/{request.request_id}.json"


def export_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True, default=json_value,
                      ensure_ascii=False).encode()


def json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not exportable: {type(value).__name__}")


def put_export(store: ArtifactStore, key: str, document: dict[str, Any]) -> str:
    """Write the export; an object left by an attempt that never committed is replaced."""
    data = export_bytes(document)
    try:
        return store.put(key, data, "application/json")
    except ArchiveError:
        store.delete(store.ref_for(key))  # nothing committed refers to it
        return store.put(key, data, "application/json")


def complete_export(session: Session, obligation: Any, customer_ids: list[int], ref: str,
                    document: dict[str, Any], now: datetime) -> str:
    """The obligation done, and each exported order's timeline says where the export is."""
    orders = [o for c in document["customers"] for o in c["orders"]]
    counts = {"customers": len(customer_ids), "orders": len(orders),
              "messages": sum(len(o["messages"]) for o in orders),
              "ledger_entries": sum(len(c["loyalty_ledger"]) for c in document["customers"])}
    note = f"exported to {ref}" if customer_ids else f"no such customer: nothing held ({ref})"
    update_obligation(session, obligation.id, completed_at=now, export_ref=ref,
                      customer_ids=customer_ids, counts=counts, note=note[:500])
    record_events(session, [
        {"order_id": oid, "at": now, "kind": "privacy_export", "from_state": None,
         "to_state": None, "actor": ACTOR,
         "detail": {"privacy_request_id": obligation.id, "export": ref}}
        for oid in sorted({o["id"] for o in orders})])
    return note[:500]
