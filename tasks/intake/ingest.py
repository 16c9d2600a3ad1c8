"""Writing intake records to the store: new orders, changed orders, catalog upserts, quarantine.

Works in chunks of CHUNK records with a constant number of statements per chunk. The caller owns
the session and commits. Running the same input twice changes nothing the second time.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import Table, bindparam, delete, null, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session

from tasks.intake.schema import OrderIn, ProductIn, Rejected
from tasks.store.db import is_postgres
from tasks.store.journal import (
    ON_HOLD,
    PACKED,
    RECEIVED,
    VERIFIED,
    insert_ignoring_duplicates,
    record_events,
    reopen_step,
    schedule_steps,
)
from tasks.store.models import Customer, Order, OrderLine, Product, Quarantine, Step

CHUNK = 1000
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CHANGEABLE_STATES = frozenset({RECEIVED, VERIFIED, PACKED, ON_HOLD})  # before confirmation
FIRST_STEP = "verify"
CUSTOMER_FACTS = ("external_id", "first_name", "last_name", "accepts_marketing", "orders_count",
                  "tags", "locale", "timezone")
PRODUCT_FACTS = ("title", "category", "tags", "stock", "grams", "price", "attributes")
LINE_FACTS = ("external_id", "sku", "title", "variant_title", "quantity", "unit_price",
              "total_discount", "grams", "gift_card", "properties")

T = TypeVar("T")
Key = tuple[str, str]


COUNTS = ("received", "accepted", "updated", "duplicates", "quarantined")


@dataclass
class IntakeResult:
    """What became of each record: received = accepted + updated + duplicates + quarantined."""

    received: int = 0
    accepted: int = 0
    updated: int = 0
    duplicates: int = 0
    quarantined: int = 0
    # One compact GX validation result per gated chunk, for the run's archive.
    validations: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def add(self, other: IntakeResult) -> None:
        for name, value in self.as_dict().items():
            setattr(self, name, value + getattr(other, name))
        self.validations += other.validations

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTS}


@dataclass
class _OrderPlan:
    """One chunk's orders sorted by what must happen to them."""

    new: list[tuple[OrderIn, str]] = field(default_factory=list)
    changed: list[tuple[OrderIn, str, RowMapping]] = field(default_factory=list)
    locked: list[Rejected] = field(default_factory=list)
    duplicates: int = 0


# ---------------------------------------------------------------- shared helpers


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to `size` items, reading the iterable lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _bulk_update(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    where: dict[str, str],
    fixed: dict[str, Any] | None = None,
) -> None:
    """One executemany UPDATE: `where` maps column → row key to match; other row keys are SET,
    and so are the `fixed` values, the same for every row."""
    if not rows:
        return
    matched = set(where.values())
    values = {key: bindparam(f"b_{key}") for key in rows[0] if key not in matched}
    statement = (
        update(table)
        .where(*(table.c[column] == bindparam(f"b_{key}") for column, key in where.items()))
        .values(values | (fixed or {}))
    )
    session.connection().execute(statement, [{f"b_{k}": v for k, v in r.items()} for r in rows])


def quarantine_records(
    session: Session, rejected: Sequence[Rejected], now: datetime
) -> tuple[int, int]:
    """Store rejected records once per (kind, fingerprint); returns (new, already known)."""
    unique = {(r.kind, r.fingerprint): r for r in reversed(rejected)}  # the first occurrence wins
    if not unique:
        return 0, 0
    fingerprints = [fp for _, fp in unique]
    query = select(Quarantine.kind, Quarantine.fingerprint).where(
        Quarantine.fingerprint.in_(fingerprints)
    )
    known = {(kind, fp) for kind, fp in session.execute(query)}
    rows = [_quarantine_row(r, now) for key, r in unique.items() if key not in known]
    insert_ignoring_duplicates(session, Quarantine, rows, ["kind", "fingerprint"])
    return len(rows), len(rejected) - len(rows)


def _storable(text: str | None) -> str | None:
    """Text a database can hold: U+FFFD for NUL (PostgreSQL refuses it) and for a lone
    surrogate (a JSON escape like \\udc00 that no UTF-8 can encode)."""
    return UNSTORABLE.sub("\ufffd", text) if text else text


def _quarantine_row(record: Rejected, now: datetime) -> dict[str, Any]:
    return {
        "kind": record.kind, "source": _storable(record.source),
        "external_id": _storable(record.external_id and record.external_id[:64]),
        "fingerprint": record.fingerprint,
        "payload": _storable(record.raw), "reasons": record.reasons,
        "origin": record.origin, "status": "open", "created_at": now, "released_at": None,
    }


# ---------------------------------------------------------------- orders


def ingest_orders(
    session: Session,
    items: Iterable[OrderIn | Rejected],
    now: datetime,
    max_failure_rate: float = 1.0,
) -> IntakeResult:
    """Store new orders, apply changes to unconfirmed ones, quarantine the rest.

    Each chunk passes the orders quality gate (Great Expectations) first; a chunk whose
    failure rate exceeds `max_failure_rate` raises GateFailed before anything is written.
    """
    result = IntakeResult()
    for chunk in chunks(items, CHUNK):
        result.add(_ingest_order_chunk(session, chunk, now, max_failure_rate))
    return result


def _ingest_order_chunk(
    session: Session, chunk: list[OrderIn | Rejected], now: datetime, max_failure_rate: float
) -> IntakeResult:
    from tasks.quality.gate import as_rejected, gate_orders  # GX loads only when intake runs

    rejected = [item for item in chunk if isinstance(item, Rejected)]
    latest = _latest_per_key([item for item in chunk if isinstance(item, OrderIn)])
    passed, refused, gate = gate_orders(list(latest.values()), now, max_failure_rate)
    gated = [as_rejected(order, reasons) for order, reasons in refused]
    plan = _plan_orders({_key(o): o for o in passed}, _existing_orders(session, list(latest)))
    to_write = [order for order, _ in plan.new] + [order for order, _, _ in plan.changed]
    customer_ids = upsert_customers(session, to_write, now)
    order_ids = _insert_orders(session, plan.new, customer_ids, now)
    order_ids |= _apply_changes(session, plan.changed, customer_ids, now)
    _insert_lines(session, [(order_ids[_key(order)], order) for order in to_write])
    _start_journeys(session, [(order_ids[_key(o)], o.source) for o, _ in plan.new], now)
    quarantined, known = quarantine_records(session, rejected + gated + plan.locked, now)
    return IntakeResult(
        received=len(chunk),
        accepted=len(plan.new),
        updated=len(plan.changed),
        duplicates=len(chunk) - len(rejected) - len(latest) + plan.duplicates + known,
        quarantined=quarantined,
        validations=[gate.to_json()],
    )


def _key(order: OrderIn) -> Key:
    return order.source, order.external_id


def _latest_per_key(orders: list[OrderIn]) -> dict[Key, OrderIn]:
    """The same order twice in one chunk: the last occurrence wins, the earlier is a duplicate."""
    return {_key(order): order for order in orders}


def _existing_orders(session: Session, keys: list[Key]) -> dict[Key, RowMapping]:
    if not keys:
        return {}
    table = Order.__table__
    query = select(table).where(
        table.c.external_id.in_({ext for _, ext in keys}),
        table.c.source.in_({source for source, _ in keys}),
    )
    if is_postgres(session):
        query = query.with_for_update()  # a concurrent sweep must not move them mid-change
    rows = session.execute(query).mappings()
    wanted = set(keys)
    return {key: row for row in rows if (key := (row["source"], row["external_id"])) in wanted}


def _plan_orders(latest: dict[Key, OrderIn], existing: dict[Key, RowMapping]) -> _OrderPlan:
    plan = _OrderPlan()
    for key, order in latest.items():
        payload_hash, row = order.payload_hash(), existing.get(key)
        if row is None:
            plan.new.append((order, payload_hash))
        elif payload_hash == row["payload_hash"] or payload_hash in row["previous_hashes"]:
            plan.duplicates += 1  # the same version again, or an older one arriving late
        elif row["state"] in CHANGEABLE_STATES:
            plan.changed.append((order, payload_hash, row))
        else:
            plan.locked.append(_locked(order, row["state"]))
    return plan


def _locked(order: OrderIn, state: str) -> Rejected:
    reason = f"order already {state}; changes after confirmation need an operator"
    reasons = [{"field": "_record", "reason": reason}]
    return Rejected("order", order.source, order.raw_text(), reasons, order.origin(),
                    order.external_id)


def _order_values(
    order: OrderIn, payload_hash: str, customer_ids: dict[str, int]
) -> dict[str, Any]:
    """The order's columns as the record states them (state and bookkeeping excluded)."""
    return {
        "source": order.source, "external_id": order.external_id, "name": order.name,
        "payload_hash": payload_hash, "customer_id": customer_ids[order.email],
        "email": order.email, "currency": order.currency,
        "locale": order.locale or order.customer.locale,
        "financial_status": order.financial_status, "subtotal": order.subtotal,
        "discounts": order.discounts, "shipping": order.shipping.price, "tax": order.tax,
        "total": order.total, "taxes_included": order.taxes_included,
        "discount_codes": [code.model_dump(mode="json") for code in order.discount_codes],
        "tax_lines": [tax.model_dump(mode="json") for tax in order.tax_lines],
        "shipping_code": order.shipping.code, "shipping_title": order.shipping.title,
        "shipping_address": (order.shipping_address.model_dump(mode="json")
                             if order.shipping_address else {}),
        "gift_note": order.gift_note, "note_attributes": order.note_attributes,
        "tags": order.tags, "accepts_marketing": order.accepts_marketing,
        "placed_at": order.placed_at, "cancelled_at": order.cancelled_at,
    }


def _fresh_journey(now: datetime) -> dict[str, Any]:
    """Columns that start (or restart) an order's journey at "received"."""
    return {"state": RECEIVED, "hold_reason": None, "promised_delivery": None,
            "stock_reserved": False, "updated_at": now}


def _insert_orders(
    session: Session, new: list[tuple[OrderIn, str]], customer_ids: dict[str, int], now: datetime
) -> dict[Key, int]:
    """Insert new orders; returns their ids by (source, external_id)."""
    if not new:
        return {}
    rows = [_order_values(order, payload_hash, customer_ids) | _fresh_journey(now)
            | {"received_at": now, "previous_hashes": []} for order, payload_hash in new]
    session.execute(Order.__table__.insert(), rows)
    return {key: row["id"] for key, row in
            _existing_orders(session, [_key(order) for order, _ in new]).items()}


def _insert_lines(session: Session, orders: list[tuple[int, OrderIn]]) -> None:
    rows = [
        {"order_id": order_id, "position": position, **line.model_dump()}
        for order_id, order in orders
        for position, line in enumerate(order.lines, start=1)
    ]
    if rows:
        session.execute(OrderLine.__table__.insert(), rows)


def _start_journeys(session: Session, orders: list[tuple[int, str]], now: datetime) -> None:
    """A new order is due for verification now; its timeline starts with "received"."""
    schedule_steps(session, [(order_id, FIRST_STEP, now) for order_id, _ in orders], now)
    record_events(session, [
        {"order_id": order_id, "at": now, "kind": "state", "from_state": None,
         "to_state": RECEIVED, "actor": "journeys", "detail": {"source": source}}
        for order_id, source in orders
    ])


# ---------------------------------------------------------------- changed orders


def _apply_changes(
    session: Session,
    changed: list[tuple[OrderIn, str, RowMapping]],
    customer_ids: dict[str, int],
    now: datetime,
) -> dict[Key, int]:
    """Replace unconfirmed orders with their new version and send them back to verification."""
    if not changed:
        return {}
    ids = [row["id"] for _, _, row in changed]
    old_lines = _lines_by_order(session, ids)
    reserved = [old_lines[row["id"]] for _, _, row in changed if row["stock_reserved"]]
    _release_stock(session, reserved)
    rows = [_order_values(order, payload_hash, customer_ids) | _fresh_journey(now)
            | {"id": row["id"], "expected_state": row["state"],
               "previous_hashes": [*row["previous_hashes"], row["payload_hash"]]}
            for order, payload_hash, row in changed]
    _bulk_update(session, Order.__table__, rows, where={"id": "id", "state": "expected_state"},
                 fixed={"packing": null()})  # SQL NULL, not JSON null: old packing is stale
    session.execute(delete(OrderLine.__table__).where(OrderLine.__table__.c.order_id.in_(ids)))
    _restart_steps(session, ids, now)
    record_events(session, [_updated_event(order, hash_, row, old_lines[row["id"]], customer_ids,
                                           now) for order, hash_, row in changed])
    return {_key(order): row["id"] for order, _, row in changed}


def _lines_by_order(session: Session, order_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    table = OrderLine.__table__
    query = (select(table.c.order_id, *(table.c[name] for name in LINE_FACTS))
             .where(table.c.order_id.in_(order_ids)).order_by(table.c.order_id, table.c.position))
    lines: dict[int, list[dict[str, Any]]] = {order_id: [] for order_id in order_ids}
    for row in session.execute(query).mappings():
        lines[row["order_id"]].append({name: row[name] for name in LINE_FACTS})
    return lines


def _release_stock(session: Session, reserved: list[list[dict[str, Any]]]) -> None:
    """Release what verification reserved for the old lines."""
    quantities: Counter[str] = Counter()
    for lines in reserved:
        for line in lines:
            if line["sku"]:
                quantities[line["sku"]] += line["quantity"]
    if not quantities:
        return
    table = Product.__table__
    statement = (update(table).where(table.c.sku == bindparam("b_sku"))
                 .values(reserved=table.c.reserved - bindparam("b_quantity")))
    session.connection().execute(
        statement, [{"b_sku": sku, "b_quantity": qty} for sku, qty in quantities.items()]
    )


def _restart_steps(session: Session, order_ids: list[int], now: datetime) -> None:
    """Verify again; later steps are dropped so the journey schedules them afresh."""
    session.execute(
        delete(Step.__table__).where(Step.__table__.c.order_id.in_(order_ids),
                                     Step.__table__.c.name != FIRST_STEP)
    )
    reopen_step(session, order_ids, FIRST_STEP, now)


def _updated_event(
    order: OrderIn,
    payload_hash: str,
    row: RowMapping,
    old_lines: list[dict[str, Any]],
    customer_ids: dict[str, int],
    now: datetime,
) -> dict[str, Any]:
    return {"order_id": row["id"], "at": now, "kind": "updated", "from_state": row["state"],
            "to_state": RECEIVED, "actor": "journeys",
            "detail": {"changed": _changed_fields(order, payload_hash, row, old_lines,
                                                  customer_ids)}}


def _changed_fields(
    order: OrderIn,
    payload_hash: str,
    row: RowMapping,
    old_lines: list[dict[str, Any]],
    customer_ids: dict[str, int],
) -> list[str]:
    """Names of the order columns that differ, plus "lines"; "customer" if only that changed."""
    values = _order_values(order, payload_hash, customer_ids)
    ignored = {"payload_hash", "customer_id", "source", "external_id"}
    changed = sorted(name for name, value in values.items()
                     if name not in ignored and row[name] != value)
    new_lines = [line.model_dump(include=set(LINE_FACTS)) for line in order.lines]
    if new_lines != old_lines:
        changed.append("lines")
    return changed or ["customer"]


# ---------------------------------------------------------------- customers


def _customer_facts(order: OrderIn) -> dict[str, Any]:
    """What this order says about its customer; None where it says nothing."""
    facts = order.customer.model_dump(include=set(CUSTOMER_FACTS))
    return facts | {"locale": order.customer.locale or order.locale}


def upsert_customers(session: Session, orders: list[OrderIn], now: datetime) -> dict[str, int]:
    """Customers keyed by e-mail: insert the missing, refresh the known; returns email → id."""
    if not orders:
        return {}
    facts: dict[str, dict[str, Any]] = {}
    for order in orders:  # later orders in the batch override earlier ones, field by field
        known = facts.setdefault(order.email, dict.fromkeys(CUSTOMER_FACTS))
        known.update({k: v for k, v in _customer_facts(order).items() if v is not None})
    table = Customer.__table__
    existing = {row["email"]: row for row in
                session.execute(select(table).where(table.c.email.in_(facts))).mappings()}
    new_rows = [_new_customer(email, f, now) for email, f in facts.items() if email not in existing]
    insert_ignoring_duplicates(session, Customer, new_rows, ["email"])
    _bulk_update(session, table, _customer_updates(facts, existing, now), where={"id": "id"})
    return dict(session.execute(select(table.c.email, table.c.id)
                                .where(table.c.email.in_(facts))).tuples().all())


def _new_customer(email: str, facts: dict[str, Any], now: datetime) -> dict[str, Any]:
    defaults = {"accepts_marketing": False, "orders_count": 0, "tags": []}
    values = {k: (v if v is not None else defaults.get(k)) for k, v in facts.items()}
    return values | {"email": email, "birthday": None, "created_at": now, "updated_at": now}


def _customer_updates(
    facts: dict[str, dict[str, Any]], existing: dict[str, RowMapping], now: datetime
) -> list[dict[str, Any]]:
    updates = []
    for email, row in existing.items():
        merged = {k: (v if v is not None else row[k]) for k, v in facts[email].items()}
        if any(row[k] != v for k, v in merged.items()):
            updates.append(merged | {"id": row["id"], "updated_at": now})
    return updates


# ---------------------------------------------------------------- products


def ingest_products(
    session: Session, items: Iterable[ProductIn | Rejected], now: datetime
) -> IntakeResult:
    """Upsert catalog products by SKU (unchanged ones are duplicates); quarantine bad rows."""
    result = IntakeResult()
    for chunk in chunks(items, CHUNK):
        result.add(_ingest_product_chunk(session, chunk, now))
    return result


def _ingest_product_chunk(
    session: Session, chunk: list[ProductIn | Rejected], now: datetime
) -> IntakeResult:
    rejected = [item for item in chunk if isinstance(item, Rejected)]
    latest = {p.sku: p.model_dump(include={"sku", *PRODUCT_FACTS})
              for p in chunk if isinstance(p, ProductIn)}
    table = Product.__table__
    existing = {row["sku"]: row for row in
                session.execute(select(table).where(table.c.sku.in_(latest))).mappings()}
    new = [values | {"updated_at": now} for sku, values in latest.items() if sku not in existing]
    changed = [values | {"updated_at": now} for sku, values in latest.items()
               if sku in existing and any(existing[sku][k] != values[k] for k in PRODUCT_FACTS)]
    insert_ignoring_duplicates(session, Product, new, ["sku"])
    _bulk_update(session, table, changed, where={"sku": "sku"})
    quarantined, known = quarantine_records(session, rejected, now)
    return IntakeResult(
        received=len(chunk),
        accepted=len(new),
        updated=len(changed),
        duplicates=len(chunk) - len(rejected) - len(new) - len(changed) + known,
        quarantined=quarantined,
    )
