"""Packing: per-line rules become the order's packing plan, documents and archive bundle.

A batch takes a constant number of queries: claim, products, invoices (and, for orders not
invoiced yet, the series lock and counter), existing artifacts, artifact insert, packing update
and the state transition; its documents go to the archive as ONE bundle. Each order's invoice
is numbered here, in the batch's transaction (tasks/invoices.py), and the plan keeps its number
and issue date so every render prints the same; PDFs are made after the commit, by the print
step (tasks/print_batch.py), outside the transaction.
Lines that need no shipping (gift cards, digital goods) are never packed: an order of only such
lines gets an invoice but no packing slip. Money thresholds (min_unit_price, insurance) are per
currency and compare amounts in the order's own currency; verification holds orders in a currency
without thresholds, so one released by an operator gets no value-based rule (the plan says so).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from tasks.archive import ArtifactStore
from tasks.config import (
    CarrierConstraints,
    InsertRules,
    InsuranceRules,
    PackingCondition,
    PackingRule,
)
from tasks.documents import DOCUMENT_KINDS, render_order_documents
from tasks.invoices import invoice_reference, issue_invoices, minor_unit
from tasks.journey import StageResult
from tasks.returns.notices import returns_url
from tasks.runtime import Runtime
from tasks.states import OrderState
from tasks.store.journal import (
    Transition,
    apply_transitions,
    claim_orders,
    insert_ignoring_duplicates,
)
from tasks.store.loaders import products_of
from tasks.store.models import Artifact, Customer, Order, OrderLine, Product
from tasks.verify import needs_shipping, ships

STAGE = "pack"
VERIFIED, PACKED = OrderState.VERIFIED, OrderState.PACKED  # the states this stage moves between
DOCUMENT_VERSION = 1
INSTRUCTION_KINDS = (("material", "materials"), ("label", "labels"), ("handling", "handling"))


@dataclass(frozen=True)
class LineFacts:
    """What packing rules look at for one order line (a missing product has no attributes)."""

    position: int
    sku: str
    tags: frozenset[str]
    category: str | None
    total_grams: int
    unit_price: Decimal


def line_facts(line: OrderLine, product: Product | None) -> LineFacts:
    grams = product.grams if product else line.grams
    return LineFacts(
        position=line.position,
        sku=line.sku or f"line-{line.position}",
        tags=frozenset(t.casefold() for t in (product.tags if product else [])),
        category=product.category.casefold() if product and product.category else None,
        total_grams=(grams or 0) * line.kept_quantity,
        unit_price=line.unit_price,
    )


def rule_matches(when: PackingCondition, facts: LineFacts, currency: str) -> bool:
    """A rule matches a line when ANY of its conditions holds (prices in the order's currency)."""
    min_price = (when.min_unit_price or {}).get(currency)
    return (
        bool(facts.tags & {t.casefold() for t in when.tags_any})
        or facts.category in {c.casefold() for c in when.categories}
        or (when.min_grams is not None and facts.total_grams >= when.min_grams)
        or (min_price is not None and facts.unit_price >= min_price)
    )


def matched_rules(
    rules: Sequence[PackingRule], lines: Sequence[LineFacts], currency: str
) -> list[tuple[PackingRule, list[LineFacts]]]:
    """Each rule (config order) with the lines that triggered it; rules nobody hit left out."""
    pairs = [(rule, [f for f in lines if rule_matches(rule.when, f, currency)]) for rule in rules]
    return [(rule, hits) for rule, hits in pairs if hits]


def instructions(matches: Sequence[tuple[PackingRule, list[LineFacts]]]) -> list[dict[str, Any]]:
    """Materials, labels and handling, de-duplicated in rule order, with the skus behind each."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rule, hits in matches:
        for kind, attribute in INSTRUCTION_KINDS:
            for text in getattr(rule, attribute):
                entry = merged.setdefault(
                    (kind, text), {"kind": kind, "text": text, "rule": rule.name, "skus": []}
                )
                entry["skus"] += [f.sku for f in hits if f.sku not in entry["skus"]]
    return list(merged.values())


def combine_carrier(constraints: Iterable[CarrierConstraints]) -> dict[str, Any]:
    """The strictest combination: shortest transit, common weekdays and methods, any flag."""
    constraints = list(constraints)
    transit = [c.max_transit_days for c in constraints if c.max_transit_days is not None]
    return {
        "max_transit_days": min(transit) if transit else None,
        "ship_weekdays": _intersection(c.ship_weekdays for c in constraints),
        "methods": _intersection(c.methods for c in constraints),
        "no_air": any(c.no_air for c in constraints),
        "signature": any(c.signature for c in constraints),
    }


def _intersection(options: Iterable[list[Any] | None]) -> list[Any] | None:
    """Values allowed by every rule that restricts them (None: nobody restricts; []: conflict)."""
    restricting = [set(o) for o in options if o is not None]
    return sorted(set.intersection(*restricting)) if restricting else None


def goods_value(order: Order) -> Decimal:
    """The goods after discounts: `subtotal` already is that (as Shopify's subtotal_price)."""
    return order.subtotal.quantize(minor_unit(order.currency))


def insurance(order: Order, lines: Sequence[LineFacts], rules: InsuranceRules) -> dict[str, Any]:
    """Insured above the currency's value threshold or when any line is in an always-insured
    category; without a threshold for the currency, the value is not judged (and the plan says)."""
    value, threshold = goods_value(order), rules.order_value_threshold.get(order.currency)
    always = {c.casefold() for c in rules.categories}
    reasons = ([f"goods value above {threshold} {order.currency}"]
               if threshold is not None and value > threshold else [])
    reasons += sorted({f"category {f.category}" for f in lines if f.category in always})
    result = {
        "insured": bool(reasons),
        "insured_value": str(value) if reasons else str(Decimal(0).quantize(value)),
        "insurance_reasons": reasons,
    }
    if threshold is None:
        result["value_rules_skipped"] = f"no money thresholds for {order.currency}"
    return result


def promo_code(secret_key: str, order: Order, prefix: str) -> str:
    """Deterministic (rerun-safe) and unique per order, unguessable without the secret."""
    message = f"promo:{order.id}:{order.external_id}".encode()
    digest = hmac.new(secret_key.encode(), message, hashlib.sha256).digest()
    return f"{prefix}-{base64.b32encode(digest).decode()[:10]}"


def note_reasons(order: Order, customer: Customer | None, rules: InsertRules) -> list[str]:
    """Why this order gets a hand-written note; empty when it does not."""
    note = rules.handwritten_note
    reasons = []
    if note.first_order and customer is not None and customer.orders_count <= 1:
        reasons.append("first order")
    if customer is not None and set(customer.tags or []) & set(note.vip_tags):
        reasons.append("VIP customer")
    if note.gift_message and (order.gift_note or "").strip():
        reasons.append("gift message")
    return reasons


def inserts(
    order: Order, lines: Sequence[LineFacts], rules: InsertRules, secret_key: str, now: datetime
) -> list[dict[str, Any]]:
    """Hand-written note, promo card and category samples, in that order."""
    result: list[dict[str, Any]] = []
    if reasons := note_reasons(order, order.customer, rules):
        result.append({"kind": "handwritten_note", "reasons": reasons})
    if rules.promo.enabled:
        result.append(
            {
                "kind": "promo",
                "code": promo_code(secret_key, order, rules.promo.prefix),
                "percent_off": rules.promo.percent_off,
                "expires_on": (now + timedelta(days=rules.promo.valid_days)).date().isoformat(),
            }
        )
    samples = {k.casefold(): v for k, v in rules.samples.items()}
    seen = dict.fromkeys(f.category for f in lines if f.category in samples)
    result += [{"kind": "sample", "category": c, "text": samples[c]} for c in seen]
    return result


def packing_plan(
    order: Order, products: dict[str, Product], rt: Runtime, now: datetime
) -> dict[str, Any]:
    """The order's packing JSON, without document refs (those come after archiving)."""
    config = rt.config.packing
    # Gift cards and goods that need no shipping: no packing rules, insurance categories or
    # samples.
    lines = [line_facts(line, products.get(line.sku or "")) for line in order.lines
             if not line.gift_card and needs_shipping(line)]
    matches = matched_rules(config.rules, lines, order.currency)
    steps = instructions(matches)
    return {
        "instructions": steps,
        "labels": [s["text"] for s in steps if s["kind"] == "label"],
        "carrier": combine_carrier(rule.carrier for rule, _ in matches),
        **insurance(order, lines, config.insurance),
        "inserts": inserts(order, lines, config.inserts, rt.settings.secret_key, now),
        # The slip's "Start a return" link, made now so a re-render prints the same one.
        "returns_url": (returns_url(rt.config, rt.settings.secret_key, order.id, now)
                        if rt.config.returns.enabled else None),
        "documents": {},
    }


# --- batch I/O -------------------------------------------------------------------------------


def document_kinds(order: Order) -> tuple[str, ...]:
    """Every document, except the packing slip when nothing is to be shipped."""
    return DOCUMENT_KINDS if ships(order) else tuple(k for k in DOCUMENT_KINDS
                                                     if k != "packing_slip")


def effect_key(order: Order, kind: str) -> str:
    """Includes the order's payload hash: an order changed before confirmation gets new papers."""
    return f"order:{order.id}:{STAGE}:{kind}:v{DOCUMENT_VERSION}:{order.payload_hash[:12]}"


def existing_documents(session: Session, orders: Sequence[Order]) -> dict[str, str]:
    """effect key → ref for documents already archived (a reopened step must not redo them)."""
    keys = [effect_key(o, kind) for o in orders for kind in document_kinds(o)]
    rows = session.execute(
        select(Artifact.effect_key, Artifact.ref).where(Artifact.effect_key.in_(keys))
    )
    return dict(rows.tuples().all())


def member_folder(order: Order) -> str:
    """A file-name-safe folder per order; the id keeps equal external ids of two sources apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", order.external_id).strip("._") or "order"
    return f"{order.id}-{safe}"


def bundle_key(members: dict[str, bytes], now: datetime) -> str:
    """Content-addressed: the same documents give the same key, so a retry rewrites nothing."""
    fingerprint = "\n".join(
        f"{name}:{hashlib.sha256(data).hexdigest()}" for name, data in sorted(members.items())
    )
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return f"documents/{now:%Y/%m/%d}/pack-{digest}.zip"


def archive_documents(
    archive: ArtifactStore,
    rendered: dict[int, dict[str, bytes]],
    orders: Sequence[Order],
    now: datetime,
) -> list[dict[str, Any]]:
    """One bundle PUT for the batch; returns the artifact rows to record."""
    folders = {o.id: member_folder(o) for o in orders}
    by_id = {o.id: o for o in orders}
    members = {
        f"{folders[oid]}/{kind}.html": data
        for oid, docs in rendered.items()
        for kind, data in docs.items()
    }
    if not members:
        return []
    refs = archive.put_bundle(bundle_key(members, now), members)
    return [
        {
            "effect_key": effect_key(by_id[oid], kind),
            "order_id": oid,
            "kind": kind,
            "ref": refs[f"{folders[oid]}/{kind}.html"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "created_at": now,
        }
        for oid, docs in rendered.items()
        for kind, data in docs.items()
    ]


def store_packing(session: Session, plans: dict[int, dict[str, Any]], now: datetime) -> None:
    """One executemany UPDATE of orders.packing, only for orders still verified."""
    table = Order.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.state == VERIFIED)
        .values(packing=bindparam("b_packing"), updated_at=now)
    )
    rows = [{"b_id": oid, "b_packing": plan} for oid, plan in plans.items()]
    session.connection().execute(statement, rows)


def archive_new_documents(
    session: Session,
    orders: Sequence[Order],
    plans: dict[int, dict[str, Any]],
    rt: Runtime,
    now: datetime,
) -> int:
    """Render and archive documents not recorded yet, fill in each plan's refs; return the count."""
    refs = existing_documents(session, orders)
    missing = [o for o in orders if any(effect_key(o, k) not in refs for k in document_kinds(o))]
    rendered = {o.id: render_order_documents(o, plans[o.id], rt.config, document_kinds(o))
                for o in missing}
    artifacts = archive_documents(rt.archive, rendered, missing, now)
    insert_ignoring_duplicates(session, Artifact, artifacts, ["effect_key"])
    refs = {row["effect_key"]: row["ref"] for row in artifacts} | refs  # recorded refs win
    for order in orders:
        documents = {kind: refs[effect_key(order, kind)] for kind in document_kinds(order)}
        plans[order.id]["documents"] = documents
    return len(artifacts)


def pack(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime) -> StageResult:
    """Plan, document, archive and mark packed every verified order of the batch."""
    orders = claim_orders(session, order_ids, VERIFIED)
    result = StageResult(STAGE, skipped=len(set(order_ids)) - len(orders))
    if not orders:
        return result
    products = products_of(session, orders)
    plans = {o.id: packing_plan(o, products, rt, now) for o in orders}
    for order_id, invoice in issue_invoices(session, orders, now, rt.config.store).items():
        plans[order_id]["invoice"] = invoice_reference(invoice)
    documents = archive_new_documents(session, orders, plans, rt, now)
    store_packing(session, plans, now)
    apply_transitions(session, STAGE, VERIFIED, [Transition(o.id, PACKED) for o in orders], now)
    result.advanced = len(orders)
    result.details = {"documents": documents, "insured": sum(p["insured"] for p in plans.values())}
    return result
