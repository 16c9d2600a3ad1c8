"""Hostile and broken input: every record is stored or quarantined with a reason naming its field,
nothing is lost, customer text is never run as a template, mail carries no injected header and
every HTML output escapes what the customer wrote. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import email
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select

from tasks.aftercare.feedback import ingest_feedback, read_feedback
from tasks.confirm import confirm
from tasks.documents import DOCUMENT_KINDS
from tasks.intake import IntakeError, ingest_orders, read_orders
from tasks.messaging.outbox import dispatch
from tasks.pack import pack
from tasks.store.db import session_scope
from tasks.store.models import (
    Base,
    FeedbackResponse,
    Message,
    Order,
    OrderLine,
    Quarantine,
    Shipment,
    TrackingEvent,
)
from tasks.tracking.formats import read_events, read_shipments
from tasks.tracking.ingest import ingest_events
from tasks.verify import verify
from tests.factories import add_catalog, add_order

# ---------------------------------------------------------------- hostile text

JINJA = "{{ 7*7 }} {% for x in range(3) %}loop{% endfor %} {{ ''.__class__.__mro__ }}"
BROKEN_JINJA = "{% for x in %}{{ unclosed"
SCRIPT = "<script>alert('x')</script>"
SQL = "'); DROP TABLE orders;--"
CRLF_BCC = "Eve\r\nBcc: evil@attacker.example"
Q_NEWLINE = "Eve =?UTF-8?Q?=0A?=Bcc: evil@attacker.example"
B_NEWLINE = "Eve =?utf-8?b?DQpCY2M6IGV2aWxAYXR0YWNrZXIuZXhhbXBsZQ==?="
HUGE = "x" * 1_000_000
NUL = "nul\x00byte"

# What no HTML output may contain raw, and what must show up there escaped instead.
RAW_MARKUP = "<script"
ESCAPED_MARKUP = "&lt;script&gt;"
JINJA_LITERAL = "{{ 7*7 }}"
EXPECTED_HEADERS = sorted(["From", "To", "Reply-To", "Subject", "Date", "Message-ID",
                           "MIME-Version", "Content-Type"])

# SUPERSEDED: an earlier version with other content, replaced in the same batch: an update.
STORED, DUPLICATE, SUPERSEDED = "stored", "duplicate", "superseded"
ADDRESS = {"name": "Eve Example", "address1": "1 Analytical Way", "city": "Portland",
           "province_code": "OR", "zip": "97209", "country_code": "US"}


@dataclass
class Case:
    """One hand-written record and what must become of it: stored, duplicate, or the field
    its quarantine reason has to name."""

    label: str
    record: Any  # a dict (JSON object), a CSV row dict, or raw text for a line
    expect: str


def line_of(record: Any) -> str:
    return record if isinstance(record, str) else json.dumps(record)


def json_object(record: Any) -> dict[str, Any]:
    return json.loads(record) if isinstance(record, str) else record


def write_jsonl(path: Path, cases: list[Case]) -> Path:
    path.write_text("".join(line_of(c.record) + "\n" for c in cases), encoding="utf-8")
    return path


# ---------------------------------------------------------------- orders, three formats


def canonical(external_id: str, **fields: Any) -> dict[str, Any]:
    order = {"external_id": external_id, "email": f"{external_id.lower()}@example.com",
             "placed_at": "2026-11-18T08:00:00Z", "currency": "USD", "financial_status": "paid",
             "shipping": {"code": "standard", "title": "Standard", "price": "5.00"},
             "lines": [{"sku": "TEE-1", "title": "Cotton tee", "quantity": 1,
                        "unit_price": "25.00"}],
             "shipping_address": dict(ADDRESS), "customer": {"first_name": "Eve"}}
    return order | fields


def canonical_line(**fields: Any) -> list[dict[str, Any]]:
    return [{"sku": "TEE-1", "title": "Cotton tee", "quantity": 1, "unit_price": "25.00"} | fields]


CANONICAL = [
    Case("markup, templates and SQL everywhere", canonical(
        "C-1", name="#C-1\r\nBcc: evil@attacker.example", gift_note=f"{JINJA}\n{SCRIPT}\n{SQL}",
        customer={"first_name": f"{SCRIPT}{JINJA_LITERAL}", "last_name": SQL},
        lines=canonical_line(title=f"{SCRIPT} {JINJA_LITERAL}", properties={"Engraving": JINJA,
                                                                 "<b>": SCRIPT}),
        shipping_address=ADDRESS | {"name": f"{SCRIPT} Eve", "address1": SQL},
        note_attributes={"gift_message": BROKEN_JINJA}, tags=[SQL, SCRIPT]), STORED),
    Case("encoded newlines in names", canonical(
        "C-2", name="#C-2 =?UTF-8?Q?=0A?=Bcc:x@y.z", customer={"first_name": Q_NEWLINE,
                                                            "last_name": B_NEWLINE},
        gift_note=BROKEN_JINJA), STORED),
    Case("wrong type: quantity", canonical("C-3", lines=canonical_line(quantity="many")),
         "lines[0].quantity"),
    Case("missing e-mail", {k: v for k, v in canonical("C-4").items() if k != "email"},
         STORED),  # stored and never mailed (issue 13)
    Case("1 MB name", canonical("C-5", name=HUGE), "name"),
    Case("NUL in the gift note", canonical("C-6", gift_note=NUL), "gift_note"),
    Case("NUL in a line property", canonical("C-7", lines=canonical_line(properties={"k": NUL})),
         "lines[0].properties"),
    Case("NaN total", '{"external_id": "C-8", "email": "c8@example.com", "placed_at": '
         '"2026-11-18T08:00:00Z", "currency": "USD", "financial_status": "paid", "total": NaN, '
         '"lines": [{"title": "t", "quantity": 1, "unit_price": "1.00"}]}', "total"),
    Case("Infinity discount", '{"external_id": "C-9", "email": "c9@example.com", "placed_at": '
         '"2026-11-18T08:00:00Z", "currency": "USD", "financial_status": "paid", '
         '"discounts": Infinity, "lines": [{"title": "t", "quantity": 1, "unit_price": "1"}]}',
         "discounts"),
    Case("1e400 price", '{"external_id": "C-10", "email": "c10@example.com", "placed_at": '
         '"2026-11-18T08:00:00Z", "currency": "USD", "financial_status": "paid", '
         '"lines": [{"title": "t", "quantity": 1, "unit_price": 1e400}]}', "lines[0].unit_price"),
    Case("negative price", canonical("C-11", lines=canonical_line(unit_price="-1.00")),
         "lines[0].unit_price"),
    Case("10**30 quantity", canonical("C-12", lines=canonical_line(quantity=10**30)),
         "lines[0].quantity"),
    Case("total that does not add up", canonical("C-13", total="999.99"),
         STORED),  # stored, held by verification: total_mismatch (issue 13)
    Case("placed in the future", canonical("C-14", placed_at="2999-01-01T00:00:00Z"),
         "placed_in_future_seconds"),
    Case("a date before year 1 in UTC", canonical("C-15", placed_at="0001-01-01T00:00:00+14:00"),
         "placed_at"),
    Case("operator-looking status", canonical("C-16", financial_status={"$ne": None}),
         "financial_status"),
    Case("currency that is markup", canonical("C-17", currency=SCRIPT), "currency"),
    Case("an unknown field", canonical("C-18", evil=SQL), "evil"),
    Case("SQL as the time zone", canonical("C-21", customer={"timezone": SQL}),
         "customer.timezone"),
    Case("a folder as the time zone", canonical("C-22", customer={"timezone": "America"}),
         "customer.timezone"),  # ZoneInfo raises IsADirectoryError: mail timing would crash
    Case("duplicate id, first version", canonical("C-19", gift_note="first"), SUPERSEDED),
    Case("duplicate id, last version wins", canonical(
        "C-19", gift_note=SCRIPT, lines=canonical_line(title=f"{SCRIPT} {JINJA_LITERAL}")),
         STORED),
    Case("not JSON", "{\"external_id\": \"C-20\", truncated", "_record"),
    Case("not an object", "[1, 2, 3]", "_record"),
    Case("a lone surrogate as the id", '{"external_id": "\\udc00", "lines": []}', "external_id"),
    Case("a lone surrogate as the source", canonical("C-24", source="\udc00"), "source"),
]


def shopify(order_id: int, **fields: Any) -> dict[str, Any]:
    order = {"id": order_id, "name": f"#{order_id}", "email": f"s{order_id}@example.com",
             "created_at": "2026-11-18T08:00:00Z", "currency": "USD", "financial_status": "paid",
             "total_price": "30.00", "subtotal_price": "25.00", "total_tax": "0.00",
             "shipping_lines": [{"code": "STANDARD", "title": "Standard", "price": "5.00"}],
             "line_items": [{"id": 1, "sku": "TEE-1", "title": "Cotton tee", "quantity": 1,
                             "price": "25.00", "properties": []}],
             "shipping_address": dict(ADDRESS),
             "customer": {"id": order_id, "first_name": "Sam", "last_name": "Shop"}}
    return order | fields


def shopify_item(**fields: Any) -> list[dict[str, Any]]:
    return [{"id": 1, "sku": "TEE-1", "title": "Cotton tee", "quantity": 1, "price": "25.00"}
            | fields]


SHOPIFY = [
    Case("markup, templates and SQL everywhere", shopify(
        9001, name="#9001 =?UTF-8?Q?=0A?=Bcc: evil@attacker.example", note=f"{SCRIPT}\n{JINJA}",
        customer={"id": 1, "first_name": CRLF_BCC, "last_name": SCRIPT},
        line_items=shopify_item(title=f"{JINJA} tee", properties=[
            {"name": "Engraving", "value": JINJA}, {"name": SCRIPT, "value": SQL}]),
        shipping_address=ADDRESS | {"name": SQL, "address2": SCRIPT}), STORED),
    Case("broken template syntax as the gift message", shopify(
        9002, note_attributes=[{"name": "gift_message", "value": BROKEN_JINJA}],
        customer={"id": 2, "first_name": B_NEWLINE}), STORED),
    Case("customer is a string", shopify(9003, customer="Eve"), "customer"),
    Case("line items is a string", shopify(9004, line_items="oops"), "line_items"),
    Case("NaN shipping price", shopify(9005, shipping_lines=[{"price": "NaN"}]),
         "shipping_lines[0].price"),
    Case("10**30 quantity", shopify(9006, line_items=shopify_item(quantity=10**30)),
         "line_items[0].quantity"),
    Case("1e400 price", '{"id": 9007, "email": "s9007@example.com", "created_at": '
         '"2026-11-18T08:00:00Z", "currency": "USD", "financial_status": "paid", '
         '"line_items": [{"title": "t", "quantity": 1, "price": 1e400}]}', "line_items[0].price"),
    Case("negative total", shopify(9008, total_price="-5.00"), "total_price"),
    Case("missing id", {k: v for k, v in shopify(9009).items() if k != "id"}, "id"),
    Case("wrong type: taxes_included", shopify(9010, taxes_included="perhaps"), "taxes_included"),
    Case("wrong type: quantity", shopify(9011, line_items=shopify_item(quantity="many")),
         "line_items[0].quantity"),
    Case("1 MB e-mail", shopify(9012, email=HUGE + "@example.com"), "email"),
    Case("1 MB first name", shopify(9013, customer={"id": 13, "first_name": HUGE}),
         "customer.first_name"),
    Case("NUL in the note", shopify(9014, note=NUL), "note"),
    Case("a date before year 1 in UTC", shopify(9015, created_at="0001-01-01T00:00:00+14:00"),
         "created_at"),
    Case("total that does not add up", shopify(9016, total_price="31.00"), STORED),
    Case("placed in the future", shopify(9017, created_at="2999-01-01T00:00:00Z"),
         "placed_in_future_seconds"),
    Case("e-mail carrying a header", shopify(9018, email="s9018@example.com\nBcc: x@y.z"),
         "email"),
    Case("duplicate id, first version", shopify(9019, note="first"), SUPERSEDED),
    Case("duplicate id, last version wins", shopify(9019, note=f"{SQL} {SCRIPT}"), STORED),
    Case("not JSON", '{"id": 9020, "line_items": [', "_record"),
]

CSV_COLUMNS = ["order_id", "order_name", "email", "placed_at", "currency", "financial_status",
               "first_name", "last_name", "ship_name", "ship_address1", "ship_city",
               "ship_province_code", "ship_zip", "ship_country_code", "shipping_code",
               "shipping_title", "shipping_price", "total", "gift_note", "sku", "title",
               "quantity", "unit_price"]


def csv_row(order_id: str, **cells: Any) -> dict[str, Any]:
    row = {"order_id": order_id, "order_name": f"#{order_id}",
           "email": f"v{order_id.lower()}@example.com", "placed_at": "2026-11-18T08:00:00Z",
           "currency": "USD", "financial_status": "paid", "first_name": "Val",
           "last_name": "Csv", "ship_name": ADDRESS["name"], "ship_address1": ADDRESS["address1"],
           "ship_city": ADDRESS["city"], "ship_province_code": "OR", "ship_zip": "97209",
           "ship_country_code": "US", "shipping_code": "standard", "shipping_title": "Standard",
           "shipping_price": "5.00", "total": "", "gift_note": "", "sku": "TEE-1",
           "title": "Cotton tee", "quantity": "1", "unit_price": "25.00"}
    return row | cells


CSV = [
    Case("markup, templates and SQL everywhere", csv_row(
        "V-1", order_name="#V-1\r\nBcc: evil@attacker.example", first_name=SCRIPT,
        last_name=JINJA_LITERAL, gift_note=f"{JINJA}\r\n{SCRIPT}\r\n{SQL}",
        title=f"{SCRIPT} {JINJA_LITERAL}",
        ship_name=SQL), STORED),
    Case("encoded newlines in names", csv_row("V-2", first_name=B_NEWLINE, last_name=Q_NEWLINE,
                                              gift_note=BROKEN_JINJA), STORED),
    Case("wrong type: quantity", csv_row("V-3", quantity="ten"), "quantity"),
    Case("NaN price", csv_row("V-4", unit_price="NaN"), "unit_price"),
    Case("1e400 total", csv_row("V-5", total="1e400"), "total"),
    Case("10**30 quantity", csv_row("V-6", quantity=str(10**30)), "quantity"),
    Case("NUL in the gift note", csv_row("V-7", gift_note=NUL), "gift_note"),
    Case("missing order id", csv_row(""), "order_id"),
    Case("e-mail carrying a header", csv_row("V-9", email="v9@example.com\r\nBcc: x@y.z"),
         "email"),
    Case("total that does not add up", csv_row("V-10", total="99.00"), STORED),
    Case("placed in the future", csv_row("V-11", placed_at="2999-01-01T00:00:00Z"),
         "placed_in_future_seconds"),
    Case("currency that is markup", csv_row("V-12", currency=SCRIPT), "currency"),
]


def write_csv(path: Path, cases: list[Case]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(case.record for case in cases)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return path


ORDER_FILES: dict[str, tuple[list[Case], Callable[[Path, list[Case]], Path]]] = {
    "canonical.jsonl": (CANONICAL, write_jsonl),
    "shopify.jsonl": (SHOPIFY, write_jsonl),
    "orders.csv": (CSV, write_csv),
}


@dataclass
class Outcome:
    """What became of one file's hand-written records."""

    cases: list[Case]
    counts: dict[str, int]
    stored: dict[str, Order]  # by external id
    quarantined: list[Quarantine]


def ingest_order_files(engine, tmp_path: Path, now) -> dict[str, Outcome]:
    outcomes = {}
    for name, (cases, write) in ORDER_FILES.items():
        path = write(tmp_path / name, cases)
        with session_scope(engine) as session:
            counts = ingest_orders(session, read_orders(path), now).as_dict()
        with session_scope(engine) as session:
            outcomes[name] = Outcome(cases, counts, {}, session.scalars(
                select(Quarantine).where(Quarantine.origin.like(f"{name}:%"))).all())
    with session_scope(engine) as session:
        orders = session.scalars(select(Order)).all()
        for order in orders:
            _ = [line.properties for line in order.lines]  # loaded before the session closes
    by_source = {"canonical": "canonical.jsonl", "shopify": "shopify.jsonl", "csv": "orders.csv"}
    for order in orders:
        outcomes[by_source[order.source]].stored[order.external_id] = order
    return outcomes


def external_id(case: Case, name: str) -> str | None:
    if name == "orders.csv":
        return case.record["order_id"] or None
    if isinstance(case.record, dict):
        return str(case.record.get("external_id", case.record.get("id")))
    return None


def quarantine_for(outcome: Outcome, name: str, index: int) -> Quarantine | None:
    """The quarantine entry of the record at `index`: by file line, or by order id for CSV."""
    case = outcome.cases[index]
    if name == "orders.csv":
        wanted = external_id(case, name)
        found = [q for q in outcome.quarantined if q.external_id == wanted]
    else:
        found = [q for q in outcome.quarantined if q.origin == f"{name}:line {index + 1}"]
    return found[0] if len(found) == 1 else None


def names_field(entry: Quarantine, field: str) -> bool:
    """A reason names `field`; a CSV line column also says its file line: `quantity (line 7)`."""
    return any(r["field"] == field or r["field"].startswith(f"{field} (line ")
               for r in entry.reasons)


def check_outcomes(name: str, outcome: Outcome) -> None:
    """Each record as expected; every reason names a field and says why."""
    for index, case in enumerate(outcome.cases):
        entry = quarantine_for(outcome, name, index)
        if case.expect == STORED:
            assert entry is None and external_id(case, name) in outcome.stored, case.label
        elif case.expect in (DUPLICATE, SUPERSEDED):
            assert entry is None, case.label
        else:
            assert entry is not None, f"{name}: {case.label} was not quarantined"
            assert names_field(entry, case.expect), f"{name}: {case.label}: {entry.reasons}"
            assert all(str(reason["reason"]).strip() for reason in entry.reasons)
    counts = outcome.counts
    assert counts["received"] == len(outcome.cases)
    assert counts["received"] == (counts["accepted"] + counts["updated"] + counts["duplicates"]
                                  + counts["quarantined"])
    assert counts["accepted"] == sum(c.expect == STORED for c in outcome.cases)
    assert counts["duplicates"] == sum(c.expect == DUPLICATE for c in outcome.cases)
    assert counts["updated"] == sum(c.expect == SUPERSEDED for c in outcome.cases)


def test_hostile_orders_are_stored_verbatim_or_quarantined_with_their_field(
    engine, now, tmp_path, figure
):
    outcomes = ingest_order_files(engine, tmp_path, now)
    for name, outcome in outcomes.items():
        check_outcomes(name, outcome)

    c1 = outcomes["canonical.jsonl"].stored["C-1"]
    assert c1.gift_note == f"{JINJA}\n{SCRIPT}\n{SQL}"  # kept as written, never evaluated
    assert c1.name == "#C-1\r\nBcc: evil@attacker.example"
    assert c1.lines[0].properties == {"Engraving": JINJA, "<b>": SCRIPT}
    assert c1.note_attributes == {"gift_message": BROKEN_JINJA} and c1.tags == [SQL, SCRIPT]
    assert c1.shipping_address["address1"] == SQL
    assert outcomes["canonical.jsonl"].stored["C-19"].gift_note == SCRIPT  # last version won
    s1 = outcomes["shopify.jsonl"].stored["9001"]
    assert s1.lines[0].properties == {"Engraving": JINJA, SCRIPT: SQL}
    assert outcomes["orders.csv"].stored["V-1"].gift_note == f"{JINJA}\r\n{SCRIPT}\r\n{SQL}"
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    with session_scope(engine) as session:
        stored = session.scalar(select(func.count()).select_from(Order))
        quarantined = session.scalar(select(func.count()).select_from(Quarantine))
    records = sum(len(o.cases) for o in outcomes.values())
    duplicates = sum(o.counts["duplicates"] for o in outcomes.values())
    superseded = sum(o.counts["updated"] for o in outcomes.values())
    assert records == stored + quarantined + duplicates + superseded
    lost = records - stored - quarantined - duplicates - superseded
    figure(f"hostile orders ({engine.dialect.name}): {records} hand-written records in 3 formats"
           f" — stored {stored}, quarantined {quarantined} (each naming its field), "
           f"duplicates {duplicates}, superseded {superseded}, lost {lost}, tracebacks 0")


# ---------------------------------------------------------------- through to the customer


def run_pipeline(engine, runtime, order_ids: list[int], now) -> dict[str, int]:
    """verify → pack → confirm → dispatch, each stage a batch with the frozen clock."""
    counts = {}
    for stage in (verify, pack, confirm):
        with session_scope(engine) as session:
            counts[stage.__name__] = stage(session, order_ids, now, runtime).advanced
    with session_scope(engine) as session:
        counts["sent"] = dispatch(session, now, runtime).sent
    return counts


def header_problems(raw: bytes, to_addr: str) -> list[str]:
    """Why a mail's headers are not exactly the expected single-line set (empty: they are)."""
    parsed = email.message_from_bytes(raw, policy=default_policy)
    problems = []
    if sorted(parsed.keys()) != EXPECTED_HEADERS:
        problems.append(f"headers {sorted(parsed.keys())}")
    for name in ("Subject", "To"):
        if any(c in str(parsed[name]) for c in "\r\n"):
            problems.append(f"{name} spans lines: {parsed[name]!r}")
    if [a.addr_spec for a in parsed["To"].addresses] != [to_addr]:
        problems.append(f"recipients {parsed['To'].addresses}")
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    if any(line.startswith((b"bcc", b"cc:")) for line in head.split(b"\r\n")):
        problems.append("a Bcc/Cc line in the raw header block")
    return problems


def html_problems(html: str, where: str, shows_markup: bool) -> list[str]:
    """Raw markup anywhere; where the order's text holds markup and a template, that they show
    escaped and literally."""
    problems = [f"{where}: raw <script>"] if RAW_MARKUP in html.lower() else []
    if shows_markup and ESCAPED_MARKUP not in html:
        problems.append(f"{where}: the customer's markup is missing, not escaped")
    if shows_markup and (JINJA_LITERAL not in html or "49" in html):
        problems.append(f"{where}: {JINJA_LITERAL} was evaluated or lost")
    return problems


def mail_parts(raw: bytes) -> tuple[str, str]:
    parsed = email.message_from_bytes(raw, policy=default_policy)
    return (parsed.get_body(("plain",)).get_content(), parsed.get_body(("html",)).get_content())


# Stored hostile orders whose e-mail and documents show markup and a template literally.
SHOWS_MARKUP = {"C-1", "C-19", "9001", "V-1"}


def test_hostile_orders_reach_the_customer_escaped_and_without_injected_headers(
    engine, runtime, now, tmp_path, figure
):
    with session_scope(engine) as session:
        add_catalog(session, now)
    outcomes = ingest_order_files(engine, tmp_path, now)
    stored = {ext: o for outcome in outcomes.values() for ext, o in outcome.stored.items()}
    held = {"C-13", "9016", "V-10"}  # totals nothing explains: held by verification (issue 13)
    counts = run_pipeline(engine, runtime, [o.id for o in stored.values()], now)
    orders = {ext: o for ext, o in stored.items() if ext not in held and o.email}  # C-4: none
    assert counts == dict.fromkeys(("verify", "pack", "confirm"), len(stored) - len(held)) | {
        "sent": len(orders)}

    with session_scope(engine) as session:
        messages = {m.order_id: (m.to_addr, m.artifact_ref) for m in session.scalars(
            select(Message))}
        documents = {o.external_id: o.packing["documents"] for o in session.scalars(
            select(Order)) if o.packing}
    header_faults, html_faults, pages_checked = [], [], 0
    for ext, order in orders.items():
        to_addr, ref = messages[order.id]
        raw = runtime.archive.get(ref)
        header_faults += header_problems(raw, to_addr)
        text, html = mail_parts(raw)
        pages = {"mail": html} | {kind: runtime.archive.get(documents[ext][kind]).decode()
                                  for kind in DOCUMENT_KINDS}
        for where, page in pages.items():
            html_faults += html_problems(page, f"{ext} {where}", ext in SHOWS_MARKUP)
        pages_checked += len(pages)
        if ext in SHOWS_MARKUP:
            assert SCRIPT in text  # the plain-text part shows the customer's words as written
    assert header_faults == [] and html_faults == []
    c1 = email.message_from_bytes(runtime.archive.get(messages[orders["C-1"].id][1]),
                                  policy=default_policy)
    assert c1["Subject"] == "Thank you for your order #C-1 Bcc: evil@attacker.example"
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in c1.get_body(("html",)).get_content()
    figure(f"hostile orders to the customer ({engine.dialect.name}): {len(orders)} stored hostile"
           f" orders verified, packed, confirmed and mailed — {len(orders)} mails and "
           f"{pages_checked} HTML outputs checked, injected headers {len(header_faults)}, "
           f"unescaped {len(html_faults)}")


# ---------------------------------------------------------------- tracking events

TRACKING = "1ZHOSTILE0000001"


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "tracking_number": TRACKING, "carrier": "ups",
            "tag": "InTransit", "occurred_at": "2026-11-18T09:00:00Z"} | fields


def webhook(event_id: str, **msg: Any) -> dict[str, Any]:
    return {"event_id": event_id, "ts": 1763456400,
            "msg": {"tracking_number": TRACKING, "slug": "ups", "tag": "InTransit"} | msg}


EVENTS = [
    Case("markup and templates in the carrier's text", event(
        "E-1", message=f"{SCRIPT} {JINJA}", location=SQL), STORED),
    Case("markup in a webhook checkpoint", webhook("E-2", checkpoints=[{
        "checkpoint_time": "2026-11-18T09:30:00Z", "message": SCRIPT,
        "location": {"city": SQL, "state": JINJA_LITERAL}}]), STORED),
    Case("markup as the status tag", event("E-3", tag=SCRIPT), "tag"),
    Case("missing event id", {k: v for k, v in event("E-4").items() if k != "event_id"},
         "event_id"),
    Case("in the future", event("E-5", occurred_at="2999-01-01T00:00:00Z"), "occurred_at"),
    Case("a timestamp of 1e400", '{"event_id": "E-6", "ts": 1e400, "msg": {"tracking_number": '
         f'"{TRACKING}", "tag": "InTransit"}}}}', "ts"),
    Case("a NaN timestamp", '{"event_id": "E-7", "ts": NaN, "msg": {"tracking_number": '
         f'"{TRACKING}", "tag": "InTransit"}}}}', "ts"),
    Case("NUL in the message", event("E-8", message=NUL), "message"),
    Case("msg is not an object", {"event_id": "E-9", "msg": SCRIPT}, "_record"),
    Case("an SQL-looking tracking number", event("E-10", tracking_number=SQL),
         "tracking_number"),
    Case("a 100-character id for an unknown parcel", event("E" * 100, tracking_number="NOPE"),
         "tracking_number"),
    Case("a date before year 1 in UTC", event("E-12", occurred_at="0001-01-01T00:00:00+14:00"),
         "occurred_at"),
    Case("wrong type: tracking number", event("E-13", tracking_number={"$gt": ""}),
         "tracking_number"),
    Case("1 MB event id", event(HUGE), "event_id"),
    Case("a lone surrogate as the id", event("\udc00"), "event_id"),
    Case("duplicate event id", event("E-1", message="again"), DUPLICATE),
    Case("not JSON", "{broken json", "_record"),
    Case("a raw U+2028 in the message", json.dumps(event("E-17", message="a\u2028b\x85c"),
                                                   ensure_ascii=False), STORED),
]


def check_file_outcomes(name: str, cases: list[Case], quarantined: list[Quarantine],
                        stored: set[str], key: Callable[[Case], str]) -> None:
    origins = {q.origin: q for q in quarantined}
    for index, case in enumerate(cases):
        entry = origins.get(f"{name}:line {index + 1}")
        if case.expect in (STORED, DUPLICATE):
            assert entry is None, f"{case.label}: {entry and entry.reasons}"
            assert case.expect == DUPLICATE or key(case) in stored, case.label
        else:
            assert entry is not None, f"{name}: {case.label} was not quarantined"
            assert names_field(entry, case.expect), (case.label, entry.reasons)
            assert all(str(r["reason"]).strip() for r in entry.reasons)


def test_hostile_tracking_events_are_stored_or_quarantined(engine, now, tmp_path, figure):
    with session_scope(engine) as session:
        order = add_order(session, now, state="shipped", step=None)
        session.add(Shipment(order_id=order.id, carrier="ups", tracking_number=TRACKING,
                             status="InfoReceived", shipped_at=now - timedelta(days=1),
                             created_at=now, updated_at=now))
    path = write_jsonl(tmp_path / "events.jsonl", EVENTS)
    with session_scope(engine) as session:
        counts = ingest_events(session, read_events(path), now).as_dict()
    with session_scope(engine) as session:
        stored = {e.event_id: e for e in session.scalars(select(TrackingEvent))}
        quarantined = session.scalars(select(Quarantine)).all()

    check_file_outcomes("events.jsonl", EVENTS, quarantined, set(stored),
                        lambda case: json_object(case.record)["event_id"])
    assert stored["E-1"].message == f"{SCRIPT} {JINJA}" and stored["E-1"].location == SQL
    assert stored["E-2"].location == f"{SQL}, {JINJA_LITERAL}"
    assert counts["received"] == len(EVENTS) == (counts["accepted"] + counts["duplicates"]
                                                 + counts["quarantined"])
    assert (counts["accepted"], counts["quarantined"]) == (len(stored), len(quarantined))
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    figure(f"hostile tracking events ({engine.dialect.name}): {len(EVENTS)} hand-written "
           f"records — stored {len(stored)}, quarantined {len(quarantined)}, duplicates "
           f"{counts['duplicates']}, tracebacks 0")


# ---------------------------------------------------------------- feedback


def answer(order: str, **fields: Any) -> dict[str, Any]:
    return {"order_external_id": order, "rating": 2, "comment": "ok",
            "submitted_at": "2026-11-17T09:00:00Z"} | fields


FEEDBACK = [
    Case("markup, templates and SQL in the comment", answer(
        "FB-1", comment=f"{SCRIPT}\n{JINJA}\n{SQL}", tags=["damaged"]), STORED),
    Case("5000-character comment", answer("FB-2", comment="y" * 5000), STORED),
    Case("1 MB comment", answer("FB-3", comment=HUGE), "comment"),
    Case("NUL in the comment", answer("FB-3", comment=NUL), "comment"),
    Case("markup as a tag", answer("FB-3", tags=[SCRIPT]), "tags[0]"),
    Case("10**30 rating", answer("FB-3", rating=10**30), "rating"),
    Case("NaN rating", '{"order_external_id": "FB-3", "rating": NaN, '
         '"submitted_at": "2026-11-17T09:00:00Z"}', "rating"),
    Case("10**30 order id", {"order_id": 10**30, "sig": "x", "rating": 1,
                             "submitted_at": "2026-11-17T09:00:00Z"}, "order_id"),
    Case("wrong type: comment", answer("FB-3", comment=42), "comment"),
    Case("no time zone", answer("FB-3", submitted_at="2026-11-17T09:00:00"), "submitted_at"),
    Case("an SQL-looking order", answer(SQL), "order_external_id"),
    Case("an unknown field", answer("FB-3", evil=SQL), "evil"),
    Case("a lone surrogate as the order", answer("\udc00"), "order_external_id"),
    Case("not JSON", "{\"rating\": 5,", "_record"),
    Case("raw U+2028, U+0085 and a form feed escape in the comment", json.dumps(answer(
        "FB-2", comment="one\u2028two\x85three\x0cfour", submitted_at="2026-11-17T11:00:00Z"),
        ensure_ascii=False), STORED),
]


def test_hostile_feedback_is_stored_verbatim_or_quarantined(
    engine, runtime, now, tmp_path, figure
):
    with session_scope(engine) as session:
        ids = {ext: add_order(session, now, state="delivered", step=None, external_id=ext,
                              delivered_at=now - timedelta(days=2)).id
               for ext in ("FB-1", "FB-2", "FB-3")}
    path = write_jsonl(tmp_path / "feedback.jsonl", FEEDBACK)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a byte-order mark, as Excel writes
    with path.open("ab") as handle:  # invalid UTF-8 inside a string: read as U+FFFD
        handle.write(b'{"order_external_id": "FB-3", "rating": 3, "comment": "caf\xe9 \xff", '
                     b'"submitted_at": "2026-11-17T10:00:00Z"}\n')
    cases = [*FEEDBACK, Case("invalid UTF-8 in the comment", {"order_external_id": "FB-3"},
                             STORED)]
    with session_scope(engine) as session:
        counts = ingest_feedback(session, read_feedback(path), now, runtime).as_dict()
    with session_scope(engine) as session:
        answers = session.scalars(select(FeedbackResponse)).all()
        quarantined = session.scalars(select(Quarantine)).all()

    stored = {ext for ext, order_id in ids.items() if order_id in {a.order_id for a in answers}}
    check_file_outcomes("feedback.jsonl", cases, quarantined, stored,
                        lambda case: json_object(case.record)["order_external_id"])
    comments = {a.comment for a in answers}
    assert f"{SCRIPT}\n{JINJA}\n{SQL}" in comments  # the first line, behind the BOM
    assert {"caf\ufffd \ufffd", "one\u2028two\x85three\x0cfour"} <= comments
    assert counts["received"] == len(cases) == (counts["accepted"] + counts["duplicates"]
                                                + counts["quarantined"])
    assert (counts["accepted"], counts["quarantined"]) == (len(answers), len(quarantined))
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    figure(f"hostile feedback ({engine.dialect.name}): {len(cases)} hand-written records — "
           f"stored {len(answers)}, quarantined {len(quarantined)}, tracebacks 0")


# ---------------------------------------------------------------- whole-file problems

GOOD_CANONICAL = json.dumps(canonical("W-1")) + "\n"
GOOD_CSV = ",".join(CSV_COLUMNS) + "\n" + ",".join(
    str(v) for v in csv_row("W-1").values()) + "\n"
GOOD_EVENT = json.dumps(event("W-1")) + "\n"
BAD_UTF8 = b'{"external_id": "W-2", "name": "\xff\xfe"}\n'


def ingest_order_file(fmt: str | None) -> Callable[[Any, Path, Any], Any]:
    return lambda session, path, now: ingest_orders(session, read_orders(path, fmt), now)


def read_all(reader: Callable[[Path], Iterable[Any]]) -> Callable[[Any, Path, Any], Any]:
    return lambda session, path, now: list(reader(path))


# (label, file bytes, what reads it): each must raise one IntakeError line and store nothing.
WHOLE_FILE = [
    ("canonical: invalid UTF-8 on line 2", GOOD_CANONICAL.encode() + BAD_UTF8,
     ingest_order_file(None)),
    ("shopify: invalid UTF-8 on line 2", json.dumps(shopify(1)).encode() + b"\n" + BAD_UTF8,
     ingest_order_file(None)),
    ("csv: invalid UTF-8 on line 3", GOOD_CSV.encode() + b"W-2,\xff\xfe\n",
     ingest_order_file(None)),
    ("csv: a 1 MB cell", GOOD_CSV.encode() + f"W-3,{HUGE}\n".encode(), ingest_order_file("csv")),
    ("binary garbage", bytes(range(256)) * 4, ingest_order_file(None)),
    ("an empty file", b"", ingest_order_file(None)),
    ("a JSON array, not JSON Lines", b"[" + GOOD_CANONICAL.encode() + b"]",
     ingest_order_file(None)),
    ("csv without the order columns", b"a,b,c\n1,2,3\n", ingest_order_file(None)),
    ("an unknown format", GOOD_CANONICAL.encode(), ingest_order_file("xml")),
    ("events: invalid UTF-8 on line 2", GOOD_EVENT.encode() + BAD_UTF8, read_all(read_events)),
    ("shipments: invalid UTF-8 on line 2", GOOD_EVENT.encode() + BAD_UTF8,
     read_all(read_shipments)),
]
MISSING_FILE_READERS = [read_orders, read_events, read_shipments, read_feedback]


def test_whole_file_problems_are_one_line_errors_and_store_nothing(
    sqlite_engine, now, tmp_path, figure
):
    errors = []
    for index, (label, data, consume) in enumerate(WHOLE_FILE):
        path = tmp_path / f"broken-{index}.jsonl"
        path.write_bytes(data)
        with pytest.raises(IntakeError) as raised, session_scope(sqlite_engine) as session:
            consume(session, path, now)
        errors.append(str(raised.value))
        assert "\n" not in str(raised.value) and str(raised.value).strip(), label
    for reader in MISSING_FILE_READERS:
        with pytest.raises(IntakeError, match="no such file") as raised:
            list(reader(tmp_path / "missing.jsonl"))
        errors.append(str(raised.value))
    with session_scope(sqlite_engine) as session:
        written = sum(session.scalar(select(func.count()).select_from(model))
                      for model in (Order, OrderLine, Quarantine))
    assert written == 0 and all(len(error.splitlines()) == 1 for error in errors)
    figure(f"broken files: {len(errors)} whole-file problems in 4 readers — one-line intake "
           f"errors {len(errors)}, records written {written}, tracebacks 0")

