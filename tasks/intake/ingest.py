"""Writing intake records to the store: new orders, changed orders, catalog upserts, quarantine.

Works in chunks of CHUNK records with a constant number of statements per chunk. The caller owns
the session and commits. Running the same input twice changes nothing the second time.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import Table, bindparam, delete, insert, null, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session

from tasks.intake.schema import OrderIn, ProductIn, Rejected
from tasks.store.db import is_postgres
from tasks.store.journal import (
    CANCELLED,
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
from tasks.store.refunds import refresh_refunded_quantities
from tasks.store.stock import move_reserved

CHUNK = 1000
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CHANGEABLE_STATES = frozenset({RECEIVED, VERIFIED, PACKED, ON_HOLD})  # before confirmation
FIRST_STEP = "verify"
# Timeline event with what intake found that verification must hold for (e.g. total_mismatch).
INTAKE_FINDING = "intake_finding"
CUSTOMER_FACTS = ("external_id", "first_name", "last_name", "accepts_marketing", "orders_count",
                  "tags", "locale", "timezone")
CUSTOMER_COLUMNS = ("email", *CUSTOMER_FACTS)
PRODUCT_FACTS = ("title", "category", "tags", "stock", "grams", "price", "attributes")
LINE_FACTS = ("external_id", "sku", "title", "variant_title", "quantity", "unit_price",
              "total_discount", "grams", "gift_card", "requires_shipping", "variant_id",
              "properties")
SUPERSEDED = {  # why an earlier version of an order in the same batch was not stored
    "refused": "superseded in the same batch by a later version that was not accepted",
    "stored": "superseded in the same batch by a later version that is already stored",
}

T = TypeVar("T")
Key = tuple[str, str]
CustomerKey = tuple[str, str]  # ("id", source's id) | ("email", address) | ("order", anonymous)


COUNTS = ("received", "accepted", "updated", "duplicates", "quarantined", "deferred")


@dataclass
class IntakeResult:
    """What became of each record:
    received = accepted + updated + duplicates + quarantined + deferred."""

    received: int = 0
    accepted: int = 0
    updated: int = 0
    duplicates: int = 0
    quarantined: int = 0
    deferred: int = 0  # understood, acted on later or not at all (e.g. a pending fulfillment)
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
    locked: list[Rejected] = field(default_factory=list)  # and superseded versions not stored
    duplicates: int = 0
    deferred: int = 0  # versions of cancelled orders: understood, nothing to change
    # Earlier versions with other content in the same chunk, replaced by the stored one: counted
    # as updates (as if they had come in an earlier chunk); their hashes join previous_hashes.
    superseded: dict[Key, list[str]] = field(default_factory=dict)

    @property
    def superseded_count(self) -> int:
        return sum(len(hashes) for hashes in self.superseded.values())


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
    versions = _versions_per_key([item for item in chunk if isinstance(item, OrderIn)])
    latest = [found[-1] for found in versions.values()]
    passed, refused, gate = gate_orders(latest, now, max_failure_rate)
    gated = [as_rejected(order, reasons) for order, reasons in refused]
    existing = _existing_orders(session, list(versions))
    plan = _plan_orders(versions, {_key(o) for o in passed}, existing)
    findings = _gate_findings(latest, gate.holds)
    to_write = [order for order, _ in plan.new] + [order for order, _, _ in plan.changed]
    customer_ids = upsert_customers(session, to_write, now, _anonymous_customers(plan.changed))
    order_ids = _insert_orders(session, plan, customer_ids, now)
    order_ids |= _apply_changes(session, plan, customer_ids, findings, now)
    _insert_lines(session, [(order_ids[_key(order)], order) for order in to_write])
    _restore_refunds(session, [row["id"] for _, _, row in plan.changed])
    _start_journeys(session, [(order_ids[_key(o)], o, h) for o, h in plan.new], findings, now)
    quarantined, known = quarantine_records(session, rejected + gated + plan.locked, now)
    return IntakeResult(
        received=len(chunk),
        accepted=len(plan.new),
        updated=len(plan.changed) + plan.superseded_count,
        duplicates=plan.duplicates + known,
        quarantined=quarantined,
        deferred=plan.deferred,
        validations=[gate.to_json()],
    )


def _restore_refunds(session: Session, order_ids: list[int]) -> None:
    """Changed orders got their lines re-inserted: their refunded quantities come back from the
    refunds recorded on the timeline."""
    if order_ids:
        refresh_refunded_quantities(session, order_ids)


def _key(order: OrderIn) -> Key:
    return order.source, order.external_id


def _versions_per_key(orders: list[OrderIn]) -> dict[Key, list[OrderIn]]:
    """Each order's versions in this chunk, in arrival order: the last one is the one stored."""
    versions: dict[Key, list[OrderIn]] = {}
    for order in orders:
        versions.setdefault(_key(order), []).append(order)
    return versions


def _gate_findings(orders: list[OrderIn], holds: dict[int, list[str]]) -> dict[Key, list[str]]:
    """What verification must hold each gate-held order for, e.g. "total_mismatch: total 10.00,
    computed 9.50"."""
    from tasks.quality.frames import HOLD_DETAILS

    def finding(order: OrderIn, code: str) -> str:
        describe = HOLD_DETAILS.get(code)
        return f"{code}: {describe(order)}" if describe else code

    return {_key(orders[pos]): [finding(orders[pos], code) for code in codes]
            for pos, codes in holds.items()}


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


def _plan_orders(
    versions: dict[Key, list[OrderIn]], passed: set[Key], existing: dict[Key, RowMapping]
) -> _OrderPlan:
    """Sort each order's last version in the chunk (new, changed, duplicate, locked) and count its
    earlier ones.

    A duplicate is a version whose payload hash we already hold. The hash covers exactly what we
    store (the canonical fields), so a version differing only in what we do not store (Shopify's
    `updated_at`, fulfillments, ...) IS a duplicate of what we store; any stored change is not.
    """
    plan = _OrderPlan()
    for key, found in versions.items():
        last, row = found[-1], existing.get(key)
        payload_hash = last.payload_hash()
        known = {row["payload_hash"], *row["previous_hashes"]} if row is not None else set()
        earlier = _earlier_versions(found, known | {payload_hash})
        plan.duplicates += len(found) - 1 - len(earlier)
        if key not in passed:  # refused by the quality gate
            plan.locked += [_superseded(order, "refused") for order in earlier]
        elif payload_hash in known:
            plan.duplicates += 1  # the same version again, or an older one arriving late
            plan.locked += [_superseded(order, "stored") for order in earlier]
        elif row is not None and row["state"] == CANCELLED:
            plan.deferred += 1 + len(earlier)  # a cancelled order's later versions change nothing
        elif row is not None and row["state"] not in CHANGEABLE_STATES:
            plan.locked += [_locked(order, row["state"]) for order in [*earlier, last]]
        else:
            if row is None:
                plan.new.append((last, payload_hash))
            else:
                plan.changed.append((last, payload_hash, row))
            plan.superseded[key] = [order.payload_hash() for order in earlier]
    return plan


def _earlier_versions(found: list[OrderIn], known: set[str]) -> list[OrderIn]:
    """The earlier versions in the chunk with content we do not hold, each content once."""
    seen, distinct = set(known), []
    for order in found[:-1]:
        payload_hash = order.payload_hash()
        if payload_hash not in seen:
            seen.add(payload_hash)
            distinct.append(order)
    return distinct


def _locked(order: OrderIn, state: str) -> Rejected:
    return _rejected(order, f"order already {state}; changes after confirmation need an operator")


def _superseded(order: OrderIn, outcome: str) -> Rejected:
    return _rejected(order, SUPERSEDED[outcome])


def _rejected(order: OrderIn, reason: str) -> Rejected:
    reasons = [{"field": "_record", "reason": reason}]
    return Rejected("order", order.source, order.raw_text(), reasons, order.origin(),
                    order.external_id)


def _order_values(
    order: OrderIn, payload_hash: str, customer_ids: dict[CustomerKey, int]
) -> dict[str, Any]:
    """The order's columns as the record states them (state and bookkeeping excluded)."""
    return {
        "source": order.source, "external_id": order.external_id, "name": order.name,
        "payload_hash": payload_hash, "customer_id": customer_ids[customer_key(order)],
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
        "gift_note": order.gift_note, "customer_note": order.customer_note,
        "note_attributes": order.note_attributes,
        "tags": order.tags, "accepts_marketing": order.accepts_marketing,
        "placed_at": order.placed_at, "cancelled_at": order.cancelled_at,
        "payment_gateways": order.payment_gateways or None,
    }


def _fresh_journey(now: datetime) -> dict[str, Any]:
    """Columns that start (or restart) an order's journey at "received"."""
    return {"state": RECEIVED, "hold_reason": None, "promised_delivery": None,
            "stock_reserved": False, "updated_at": now}


def _insert_orders(
    session: Session, plan: _OrderPlan, customer_ids: dict[CustomerKey, int], now: datetime
) -> dict[Key, int]:
    """Insert new orders; returns their ids by (source, external_id)."""
    if not plan.new:
        return {}
    rows = [_order_values(order, payload_hash, customer_ids) | _fresh_journey(now)
            | {"received_at": now, "previous_hashes": plan.superseded.get(_key(order), [])}
            for order, payload_hash in plan.new]
    session.execute(Order.__table__.insert(), rows)
    return {key: row["id"] for key, row in
            _existing_orders(session, [_key(order) for order, _ in plan.new]).items()}


def _insert_lines(session: Session, orders: list[tuple[int, OrderIn]]) -> None:
    rows = [
        {"order_id": order_id, "position": position, **line.model_dump()}
        for order_id, order in orders
        for position, line in enumerate(order.lines, start=1)
    ]
    skus = _skus_of_variants(session, {r["variant_id"] for r in rows
                                       if not r["sku"] and r["variant_id"]})
    for row in rows:  # a line without SKU is the catalog's product for its variant
        if not row["sku"] and row["variant_id"] in skus:
            row["sku"] = skus[row["variant_id"]]
    if rows:
        session.execute(OrderLine.__table__.insert(), rows)


def _skus_of_variants(session: Session, variant_ids: set[str]) -> dict[str, str]:
    """Catalog SKUs by Shopify variant id (kept in the product's attributes at intake)."""
    if not variant_ids:
        return {}
    variant = Product.attributes["shopify_variant_id"].as_string()
    query = select(variant, Product.sku).where(variant.in_(sorted(variant_ids)))
    return dict(session.execute(query).tuples().all())


def _start_journeys(
    session: Session,
    orders: list[tuple[int, OrderIn, str]],
    findings: dict[Key, list[str]],
    now: datetime,
) -> None:
    """A new order is due for verification now; its timeline starts with "received" (and what
    intake found for verification to hold it for)."""
    schedule_steps(session, [(order_id, FIRST_STEP, now) for order_id, _, _ in orders], now)
    record_events(session, [
        {"order_id": order_id, "at": now, "kind": "state", "from_state": None,
         "to_state": RECEIVED, "actor": "journeys", "detail": {"source": order.source}}
        for order_id, order, _ in orders
    ] + _finding_events(orders, findings, now))


def _finding_events(
    orders: list[tuple[int, OrderIn, str]], findings: dict[Key, list[str]], now: datetime
) -> list[dict[str, Any]]:
    """One event per order version intake found something in; verification reads it back."""
    return [{"order_id": order_id, "at": now, "kind": INTAKE_FINDING, "from_state": None,
             "to_state": None, "actor": "journeys",
             "detail": {"findings": findings[key], "payload_hash": payload_hash}}
            for order_id, order, payload_hash in orders if (key := _key(order)) in findings]


# ---------------------------------------------------------------- changed orders


def _apply_changes(
    session: Session,
    plan: _OrderPlan,
    customer_ids: dict[CustomerKey, int],
    findings: dict[Key, list[str]],
    now: datetime,
) -> dict[Key, int]:
    """Replace unconfirmed orders with their new version and send them back to verification."""
    changed = plan.changed
    if not changed:
        return {}
    ids = [row["id"] for _, _, row in changed]
    old_lines = _lines_by_order(session, ids)
    reserved = [old_lines[row["id"]] for _, _, row in changed if row["stock_reserved"]]
    _release_stock(session, reserved)
    rows = [_order_values(order, payload_hash, customer_ids) | _fresh_journey(now)
            | {"id": row["id"], "expected_state": row["state"],
               "previous_hashes": [*row["previous_hashes"], row["payload_hash"],
                                   *plan.superseded.get(_key(order), [])]}
            for order, payload_hash, row in changed]
    _bulk_update(session, Order.__table__, rows, where={"id": "id", "state": "expected_state"},
                 fixed={"packing": null()})  # SQL NULL, not JSON null: old packing is stale
    session.execute(delete(OrderLine.__table__).where(OrderLine.__table__.c.order_id.in_(ids)))
    _restart_steps(session, ids, now)
    written = [(row["id"], order, hash_) for order, hash_, row in changed]
    record_events(session, [_updated_event(order, hash_, row, old_lines[row["id"]], customer_ids,
                                           now) for order, hash_, row in changed]
                  + _finding_events(written, findings, now))
    return {_key(order): row["id"] for order, _, row in changed}


def _lines_by_order(session: Session, order_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each order's stored lines: their LINE_FACTS, plus the units refunded (for releasing)."""
    table = OrderLine.__table__
    columns = (*LINE_FACTS, "refunded_quantity")
    query = (select(table.c.order_id, *(table.c[name] for name in columns))
             .where(table.c.order_id.in_(order_ids)).order_by(table.c.order_id, table.c.position))
    lines: dict[int, list[dict[str, Any]]] = {order_id: [] for order_id in order_ids}
    for row in session.execute(query).mappings():
        lines[row["order_id"]].append({name: row[name] for name in columns})
    return lines


def _release_stock(session: Session, reserved: list[list[dict[str, Any]]]) -> None:
    """Release what verification reserved for the old lines (the units tasks.verify.demand
    counts: with a SKU, not a gift card, needing shipping, less those refunded)."""
    quantities: Counter[str] = Counter()
    for lines in reserved:
        for line in lines:
            kept = line["quantity"] - (line["refunded_quantity"] or 0)
            if line["sku"] and not line["gift_card"] and line["requires_shipping"] is not False \
                    and kept > 0:
                quantities[line["sku"]] += kept
    move_reserved(session, quantities, -1)


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
    customer_ids: dict[CustomerKey, int],
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
    customer_ids: dict[CustomerKey, int],
) -> list[str]:
    """Names of the order columns that differ, plus "lines"; "customer" if only that changed."""
    values = _order_values(order, payload_hash, customer_ids)
    ignored = {"payload_hash", "customer_id", "source", "external_id"}
    changed = sorted(name for name, value in values.items()
                     if name not in ignored and row[name] != value)
    new_lines = [line.model_dump(include=set(LINE_FACTS)) for line in order.lines]
    if new_lines != [{name: line[name] for name in LINE_FACTS} for line in old_lines]:
        changed.append("lines")
    return changed or ["customer"]


# ---------------------------------------------------------------- customers


def customer_key(order: OrderIn) -> CustomerKey:
    """Who placed the order: the source's customer id, else the e-mail, else nobody we know (a
    new anonymous customer per order). An e-mail is an attribute that can change, not an identity.
    Ids are not kept per source: no two of our sources share customer ids (no column could tell
    them apart)."""
    if order.customer.external_id:
        return ("id", order.customer.external_id)
    if order.email:
        return ("email", order.email)
    return ("order", f"{order.source}:{order.external_id}")


def _anonymous_customers(changed: list[tuple[OrderIn, str, RowMapping]]) -> dict[CustomerKey, int]:
    """A changed order without customer id or e-mail keeps the customer it has."""
    return {key: row["customer_id"] for order, _, row in changed
            if (key := customer_key(order))[0] == "order"}


def _customer_facts(order: OrderIn) -> dict[str, Any]:
    """What this order says about its customer; None where it says nothing."""
    facts = order.customer.model_dump(include=set(CUSTOMER_FACTS))
    return facts | {"email": order.email, "locale": order.customer.locale or order.locale}


def upsert_customers(
    session: Session,
    orders: list[OrderIn],
    now: datetime,
    known: dict[CustomerKey, int] | None = None,
) -> dict[CustomerKey, int]:
    """Insert the missing customers, refresh the known ones; returns customer_key → id.

    `known` holds keys already resolved (an anonymous order's existing customer).
    """
    known = dict(known or {})
    facts = _facts_by_customer([order for order in orders if customer_key(order) not in known])
    if not facts:
        return known
    rows = _existing_customers(session, facts)
    matches = _match_customers(facts, rows)
    owners = _keep_addresses_unique(facts, matches, rows)
    aliases = _address_owners(facts, matches, owners)
    _bulk_update(session, Customer.__table__, _customer_updates(facts, matches, now),
                 where={"id": "id"})
    new = {key: f for key, f in facts.items() if key not in matches and key not in aliases}
    ids = known | {key: row["id"] for key, row in matches.items()}
    ids |= _insert_customers(session, new, now)
    return ids | {key: owner if isinstance(owner, int) else ids[owner]
                  for key, owner in aliases.items()}


def _facts_by_customer(orders: list[OrderIn]) -> dict[CustomerKey, dict[str, Any]]:
    facts: dict[CustomerKey, dict[str, Any]] = {}
    for order in orders:  # later orders in the batch override earlier ones, field by field
        known = facts.setdefault(customer_key(order), dict.fromkeys(CUSTOMER_COLUMNS))
        known.update({k: v for k, v in _customer_facts(order).items() if v is not None})
    return facts


def _existing_customers(
    session: Session, facts: dict[CustomerKey, dict[str, Any]]
) -> list[RowMapping]:
    """Customers with one of the batch's source ids or addresses, oldest first."""
    table = Customer.__table__
    ids = {value for kind, value in facts if kind == "id"}
    emails = {f["email"] for f in facts.values() if f["email"]}
    query = (select(table).where(or_(table.c.external_id.in_(ids), table.c.email.in_(emails)))
             .order_by(table.c.id))
    return list(session.execute(query).mappings())


def _match_customers(
    facts: dict[CustomerKey, dict[str, Any]], rows: list[RowMapping]
) -> dict[CustomerKey, RowMapping]:
    """The stored customer each key means: by source id (or, once, a customer known only by this
    address, who now gets the id), else by address; unmatched keys are new customers."""
    by_id: dict[str, RowMapping] = {}
    by_email: dict[str, RowMapping] = {}
    for row in rows:
        if row["external_id"]:
            by_id.setdefault(row["external_id"], row)
        if row["email"]:
            by_email[row["email"]] = row
    matches, adopted = {}, set()
    for key, f in facts.items():
        kind, value = key
        row = by_id.get(value) if kind == "id" else by_email.get(value) if kind == "email" else None
        if row is None and kind == "id":
            row = _known_only_by_address(by_email.get(f["email"] or ""), adopted)
        if row is not None:
            matches[key] = row
    return matches


def _known_only_by_address(row: RowMapping | None, adopted: set[int]) -> RowMapping | None:
    """A customer stored without a source id (e.g. from a CSV file) holding the address: the
    first id claiming it in a batch is that customer's."""
    if row is None or row["external_id"] is not None or row["id"] in adopted:
        return None
    adopted.add(row["id"])
    return row


def _keep_addresses_unique(
    facts: dict[CustomerKey, dict[str, Any]],
    matches: dict[CustomerKey, RowMapping],
    rows: list[RowMapping],
) -> None:
    """An address belongs to one customer (Customer.email is UNIQUE). When customers with
    different source ids claim one address (a shared family mailbox), they stay two customers:
    the address stays with the customer who has it already, else the first in the batch; the
    other keeps the address it had, or none. Their orders keep the address they were placed
    with, so order mail still reaches it. Customers known by a source id claim before those
    known only by an address. Returns address → owner (a stored id, or a new customer's key)."""
    owners: dict[str, Any] = {row["email"]: row["id"] for row in rows if row["email"]}
    for key in sorted(facts, key=lambda k: k[0] != "id"):  # stable: batch order within kinds
        f, row = facts[key], matches.get(key)
        me = row["id"] if row is not None else key
        if f["email"] is not None and owners.setdefault(f["email"], me) != me:
            f["email"] = row["email"] if row is not None else None
    return owners


def _address_owners(
    facts: dict[CustomerKey, dict[str, Any]],
    matches: dict[CustomerKey, RowMapping],
    owners: dict[str, Any],
) -> dict[CustomerKey, Any]:
    """An order known only by its address belongs to whoever holds the address after this batch
    (e.g. a customer who just moved to it): key → owner."""
    return {key: owner for key in facts if key[0] == "email" and key not in matches
            and (owner := owners.get(key[1])) not in (None, key)}


def _customer_updates(
    facts: dict[CustomerKey, dict[str, Any]], matches: dict[CustomerKey, RowMapping],
    now: datetime
) -> list[dict[str, Any]]:
    """One row per changed customer (two keys may mean one customer: the later one wins)."""
    updates: dict[int, dict[str, Any]] = {}
    for key, row in matches.items():
        base = updates.get(row["id"], row)
        merged = {k: (v if v is not None else base[k]) for k, v in facts[key].items()}
        if any(row[k] != v for k, v in merged.items()):
            updates[row["id"]] = merged | {"id": row["id"], "updated_at": now}
    return list(updates.values())


def _new_customer(facts: dict[str, Any], now: datetime) -> dict[str, Any]:
    defaults = {"accepts_marketing": False, "orders_count": 0, "tags": []}
    values = {k: (v if v is not None else defaults.get(k)) for k, v in facts.items()}
    return values | {"birthday": None, "created_at": now, "updated_at": now}


def _insert_customers(
    session: Session, new: dict[CustomerKey, dict[str, Any]], now: datetime
) -> dict[CustomerKey, int]:
    """Insert new customers; those with an address are found again by it (a concurrent intake
    may have inserted it first), those without one get their ids from the INSERT itself."""
    rows = {key: _new_customer(f, now) for key, f in new.items()}
    addressed = {key: row for key, row in rows.items() if row["email"]}
    insert_ignoring_duplicates(session, Customer, list(addressed.values()), ["email"])
    anonymous = [(key, row) for key, row in rows.items() if key not in addressed]
    ids = _insert_returning_ids(session, anonymous)
    if addressed:
        table = Customer.__table__
        emails = [row["email"] for row in addressed.values()]
        found = dict(session.execute(select(table.c.email, table.c.id)
                                     .where(table.c.email.in_(emails))).tuples().all())
        ids |= {key: found[row["email"]] for key, row in addressed.items()}
    return ids


def _insert_returning_ids(
    session: Session, rows: list[tuple[CustomerKey, dict[str, Any]]]
) -> dict[CustomerKey, int]:
    if not rows:
        return {}
    statement = insert(Customer.__table__).returning(Customer.__table__.c.id,
                                                      sort_by_parameter_order=True)
    ids = session.execute(statement, [row for _, row in rows]).scalars().all()
    return {key: id_ for (key, _), id_ in zip(rows, ids, strict=True)}


# ---------------------------------------------------------------- products


def ingest_products(
    session: Session, items: Iterable[ProductIn | Rejected], now: datetime
) -> IntakeResult:
    """Upsert catalog products by SKU (unchanged ones are duplicates); quarantine bad rows."""
    result = IntakeResult()
    for chunk in chunks(items, CHUNK):
        result.add(_ingest_product_chunk(session, chunk, now))
    return result


def _variant_of(attributes: dict[str, Any] | None) -> str | None:
    return (attributes or {}).get("shopify_variant_id")


def _one_variant_per_sku(
    products: list[ProductIn], existing: dict[str, RowMapping]
) -> tuple[list[ProductIn], list[Rejected]]:
    """A SKU names one variant: a second variant claiming a SKU already held (in the catalog
    or earlier in the chunk) is refused with the reason, never written over the first."""
    owner = {sku: _variant_of(row["attributes"]) for sku, row in existing.items()}
    kept, refused = [], []
    for product in products:
        variant, holder = _variant_of(product.attributes), owner.get(product.sku)
        if variant and holder and variant != holder:
            reason = (f"SKU {product.sku} already belongs to variant {holder}; variant "
                      f"{variant} needs a SKU of its own (lines without SKU match by variant)")
            raw = json.dumps(product.model_dump(mode="json"), sort_keys=True)  # \u-escaped
            refused.append(Rejected("product", "shopify", raw,
                                    [{"field": "sku", "reason": reason}], None, product.sku))
            continue
        owner.setdefault(product.sku, variant)
        kept.append(product)
    return kept, refused


def _ingest_product_chunk(
    session: Session, chunk: list[ProductIn | Rejected], now: datetime
) -> IntakeResult:
    rejected = [item for item in chunk if isinstance(item, Rejected)]
    products = [p for p in chunk if isinstance(p, ProductIn)]
    table = Product.__table__
    existing = {row["sku"]: row for row in session.execute(
        select(table).where(table.c.sku.in_({p.sku for p in products}))).mappings()}
    products, shared = _one_variant_per_sku(products, existing)
    rejected += shared
    latest = {p.sku: p.model_dump(include={"sku", *PRODUCT_FACTS}) for p in products}
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
