"""Writing intake to the store, on SQLite and PostgreSQL: new, duplicate, changed, quarantined."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from infra.tooling.demo_data import demo_orders
from tasks.intake import ingest, read_orders, read_products
from tasks.intake.formats import order_from_json
from tasks.intake.ingest import ingest_orders, ingest_products
from tasks.store.db import session_factory
from tasks.store.models import (
    Customer,
    Order,
    OrderEvent,
    OrderLine,
    Product,
    Quarantine,
    Step,
)
from tests.conftest import FIXTURES

SHOPIFY = FIXTURES / "orders_shopify.jsonl"
COUNTED = (Order, OrderLine, OrderEvent, Step, Customer, Quarantine, Product)


def _ingest_file(engine, path: Path, now, fmt: str | None = None) -> dict[str, int]:
    with session_factory(engine)() as session, session.begin():
        return ingest_orders(session, read_orders(path, fmt), now).as_dict()


def _counts(engine) -> dict[str, int]:
    with session_factory(engine)() as session:
        return {m.__name__: session.scalar(select(func.count()).select_from(m)) for m in COUNTED}


def _shopify_record(index: int) -> dict[str, Any]:
    return json.loads(SHOPIFY.read_text(encoding="utf-8").splitlines()[index])


def _write_jsonl(tmp_path: Path, name: str, records: list[dict[str, Any]]) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _order(session, external_id: str) -> Order:
    return session.scalars(select(Order).where(Order.external_id == external_id)).one()


# ---------------------------------------------------------------- new orders


def test_new_orders_are_stored_with_lines_customer_step_and_event(engine, now):
    result = _ingest_file(engine, SHOPIFY, now)
    assert result == {"received": 3, "accepted": 3, "updated": 0, "duplicates": 0,
                      "quarantined": 0,
        "deferred": 0}
    with session_factory(engine)() as session:
        order = _order(session, "5432100001")
        assert (order.source, order.name, order.state) == ("shopify", "#1001", "received")
        assert (order.subtotal, order.discounts, order.shipping, order.tax, order.total) == (
            Decimal("127.50"), Decimal("22.50"), Decimal("12.00"), Decimal("10.20"),
            Decimal("149.70"))
        assert order.discount_codes == [{"code": "FALL15", "amount": "22.50", "type": "percentage"}]
        assert order.shipping_address["zip"] == "97204" and order.received_at == now
        assert order.payload_hash and order.accepts_marketing is True
        assert [(line.position, line.sku, line.quantity) for line in order.lines] == [
            (1, "NW-APP-001-M", 1), (2, "NW-CER-001-SAND", 2)]
        assert order.lines[0].properties == {"Monogram": "AN"}
        customer = order.customer
        assert (customer.email, customer.external_id, customer.tags, customer.orders_count) == (
            "ava.nguyen@example.com", "6100000001", ["VIP", "newsletter"], 3)
        step = session.scalars(select(Step).where(Step.order_id == order.id)).one()
        assert (step.name, step.status, step.due_at) == ("verify", "pending", now)
        evt = session.scalars(select(OrderEvent).where(OrderEvent.order_id == order.id)).one()
        assert (evt.kind, evt.from_state, evt.to_state, evt.detail) == (
            "state", None, "received", {"source": "shopify"})
        gift = _order(session, "5432100002")
        assert gift.gift_note == "Happy birthday, Sam! Love, Oliver" and gift.taxes_included


def test_canonical_and_csv_orders_are_stored_with_their_sources(engine, now):
    assert _ingest_file(engine, FIXTURES / "orders_canonical.jsonl", now)["accepted"] == 2
    assert _ingest_file(engine, FIXTURES / "orders.csv", now)["accepted"] == 2
    with session_factory(engine)() as session:
        sources = dict(session.execute(select(Order.external_id, Order.source)).tuples().all())
        assert sources == {"MP-77001": "marketplace", "CN-2001": "canonical", "7001": "csv",
                           "7002": "csv"}
        maya = _order(session, "7001")
        assert maya.total == Decimal("164.04") and len(maya.lines) == 2
        lena = _order(session, "MP-77001")
        assert lena.customer.timezone == "Europe/Berlin" and lena.locale == "de-DE"


# ---------------------------------------------------------------- duplicates and quarantine


def _mixed_file(tmp_path: Path) -> Path:
    good = _shopify_record(0)
    bad_price = good | {"id": 3, "line_items": [good["line_items"][0] | {"price": "-1.00"}]}
    no_email = good | {"id": 4, "email": "", "contact_email": None, "customer": None}
    path = _write_jsonl(tmp_path, "mixed.jsonl", [good, bad_price, no_email])
    with path.open("a", encoding="utf-8") as handle:
        handle.write("{truncated\n")
    return path


def test_same_file_twice_is_all_duplicates_and_writes_nothing(engine, now, tmp_path):
    mixed = _mixed_file(tmp_path)
    _ingest_file(engine, SHOPIFY, now)
    _ingest_file(engine, mixed, now)
    before = _counts(engine)
    assert _ingest_file(engine, SHOPIFY, now) == {
        "received": 3, "accepted": 0, "updated": 0, "duplicates": 3, "quarantined": 0,
        "deferred": 0}
    assert _ingest_file(engine, mixed, now) == {
        "received": 4, "accepted": 0, "updated": 0, "duplicates": 4, "quarantined": 0,
        "deferred": 0}
    assert _counts(engine) == before


def test_bad_records_are_quarantined_with_reasons_and_the_rest_is_stored(engine, now, tmp_path):
    result = _ingest_file(engine, _mixed_file(tmp_path), now)
    assert result == {"received": 4, "accepted": 2, "updated": 0, "duplicates": 0,
                      "quarantined": 2,
                      "deferred": 0}  # an order without e-mail (line 3) is stored (issue 13)
    with session_factory(engine)() as session:
        rows = {q.origin: q for q in session.scalars(select(Quarantine))}
        assert _order(session, "4").email is None
    assert set(rows) == {"mixed.jsonl:line 2", "mixed.jsonl:line 4"}
    price = rows["mixed.jsonl:line 2"]
    assert (price.kind, price.source, price.external_id, price.status) == (
        "order", "shopify", "3", "open")
    assert price.reasons == [{"field": "line_items[0].price",
                              "reason": "Input should be greater than or equal to 0"}]
    assert json.loads(price.payload)["id"] == 3 and len(price.fingerprint) == 64
    assert rows["mixed.jsonl:line 4"].payload == "{truncated"
    assert rows["mixed.jsonl:line 4"].reasons[0]["reason"].startswith("not valid JSON")


def test_the_same_order_twice_in_one_batch_keeps_the_last(engine, now):
    first = _shopify_record(0)
    second = first | {"note": "Ring the bell twice"}
    items = [order_from_json(r, "shopify", json.dumps(r), f"x:line {n}")
             for n, r in enumerate((first, second), start=1)]
    with session_factory(engine)() as session, session.begin():
        result = ingest_orders(session, items, now)
    # The first version's content differs: an update superseded in the batch, not a duplicate.
    assert (result.accepted, result.updated, result.duplicates, result.received) == (1, 1, 0, 2)
    with session_factory(engine)() as session:
        order = _order(session, "5432100001")
        assert order.customer_note == "Ring the bell twice"
        assert order.previous_hashes == [items[0].payload_hash()]


# ---------------------------------------------------------------- changed orders


def _put_on_hold_with_reserved_stock(engine, now) -> None:
    with session_factory(engine)() as session, session.begin():
        session.add_all([
            Product(sku="NW-APP-001-M", title="Sweater", stock=10, reserved=1, updated_at=now),
            Product(sku="NW-CER-001-SAND", title="Mug", stock=4, reserved=2, updated_at=now),
        ])
        order = _order(session, "5432100001")
        order.state, order.hold_reason, order.stock_reserved = "on_hold", "address_invalid", True
        order.packing = {"materials": ["bubble wrap"]}
        session.execute(update(Step).where(Step.order_id == order.id)
                        .values(status="held", reason="address_invalid"))
        session.add(Step(order_id=order.id, name="pack", due_at=now, status="done", updated_at=now))


def test_a_changed_order_before_confirmation_is_updated_and_verified_again(engine, now, tmp_path):
    _ingest_file(engine, SHOPIFY, now)
    _put_on_hold_with_reserved_stock(engine, now)
    changed = _shopify_record(0)
    changed["shipping_address"]["zip"] = "97205"
    changed["line_items"] = changed["line_items"][:1]
    later = now.replace(hour=11)
    result = _ingest_file(engine, _write_jsonl(tmp_path, "v2.jsonl", [changed]), later)
    assert (result["updated"], result["accepted"], result["received"]) == (1, 0, 1)
    with session_factory(engine)() as session:
        order = _order(session, "5432100001")
        assert (order.state, order.hold_reason, order.stock_reserved) == ("received", None, False)
        assert session.scalar(select(func.count()).select_from(Order)
                              .where(Order.packing.is_(None))) == 3  # SQL NULL, not JSON null
        assert order.shipping_address["zip"] == "97205"
        assert [line.sku for line in order.lines] == ["NW-APP-001-M"]
        held = dict(session.execute(select(Product.sku, Product.reserved)).tuples().all())
        assert held == {"NW-APP-001-M": 0, "NW-CER-001-SAND": 0}  # old reservation released
        steps = {s.name: s for s in session.scalars(select(Step).where(Step.order_id == order.id))}
        assert set(steps) == {"verify"}  # later steps are scheduled afresh after verification
        assert (steps["verify"].status, steps["verify"].due_at, steps["verify"].reason) == (
            "pending", later, None)
        updated = session.scalars(select(OrderEvent).where(OrderEvent.kind == "updated")).one()
        assert (updated.order_id, updated.from_state, updated.to_state) == (
            order.id, "on_hold", "received")
        assert updated.detail == {"changed": ["shipping_address", "lines"]}
    assert _ingest_file(engine, tmp_path / "v2.jsonl", later)["duplicates"] == 1


def test_a_change_after_confirmation_is_quarantined_for_an_operator(engine, now, tmp_path):
    _ingest_file(engine, SHOPIFY, now)
    with session_factory(engine)() as session, session.begin():
        session.execute(update(Order).where(Order.external_id == "5432100002")
                        .values(state="confirmed"))
    changed = _shopify_record(1) | {"email": "someone.else@example.com"}
    path = _write_jsonl(tmp_path, "late.jsonl", [changed])
    assert _ingest_file(engine, path, now)["quarantined"] == 1
    with session_factory(engine)() as session:
        assert _order(session, "5432100002").email == "oliver.walsh@example.co.uk"
        row = session.scalars(select(Quarantine)).one()
    assert row.reasons == [{"field": "_record", "reason":
                            "order already confirmed; changes after confirmation need an operator"}]
    assert (row.external_id, row.origin) == ("5432100002", "late.jsonl:line 1")
    assert _ingest_file(engine, path, now)["duplicates"] == 1


# ---------------------------------------------------------------- customers


def test_customers_are_upserted_by_email_and_keep_what_a_source_does_not_say(engine, now, tmp_path):
    _ingest_file(engine, SHOPIFY, now)
    repeat = _shopify_record(0) | {"id": 99, "email": " AVA.NGUYEN@example.com "}
    repeat["customer"] = repeat["customer"] | {"last_name": "Nguyen-Park", "orders_count": 4}
    _ingest_file(engine, _write_jsonl(tmp_path, "repeat.jsonl", [repeat]), now)
    header = (FIXTURES / "orders.csv").read_text().splitlines()[0]
    row = ("555,#555,ava.nguyen@example.com,2026-11-17T10:00:00Z,USD,paid,,,,,,,,,,,,,,,,,,,"
           "NW-ELE-002,Smart Speaker,,1,99.00")
    (tmp_path / "more.csv").write_text(f"{header}\n{row}\n", encoding="utf-8")
    assert _ingest_file(engine, tmp_path / "more.csv", now)["accepted"] == 1
    with session_factory(engine)() as session:
        ava = session.scalars(select(Customer).where(Customer.email.like("ava%"))).all()
        assert len(ava) == 1
        assert (ava[0].last_name, ava[0].orders_count, ava[0].tags, ava[0].accepts_marketing) == (
            "Nguyen-Park", 4, ["VIP", "newsletter"], True)
        orders = session.scalars(select(Order).where(Order.customer_id == ava[0].id)).all()
        assert len(orders) == 3


# ---------------------------------------------------------------- batching


def _count_statements(engine, items: list[Any], now) -> int:
    calls = []
    listener = lambda *args: calls.append(1)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        with session_factory(engine)() as session, session.begin():
            ingest_orders(session, items, now)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    return len(calls)


def _demo_items(n: int, seed: int, now) -> list[Any]:
    return [order_from_json(o, "shopify", json.dumps(o, default=str), f"demo:{i}")
            for i, o in enumerate(demo_orders(n, seed, now))]


# Every statement one chunk can issue, with all branches taken (new, changed, quarantined).
STATEMENTS_PER_CHUNK = 22


def test_statements_per_batch_do_not_grow_with_the_batch(engine, now):
    first = _count_statements(engine, _demo_items(600, 1, now), now)
    # Same ids, other contents: most orders changed, customers repeat, some quarantined.
    second = _count_statements(engine, _demo_items(900, 1, now), now)
    assert first <= STATEMENTS_PER_CHUNK and second <= STATEMENTS_PER_CHUNK


def test_chunks_add_up_and_a_later_chunk_sees_earlier_ones(engine, now, monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK", 7)
    items = _demo_items(40, 3, now)
    with session_factory(engine)() as session, session.begin():
        result = ingest_orders(session, items + items[:5], now)
    assert result.received == 45 and result.duplicates >= 5
    assert result.received == result.accepted + result.updated + result.duplicates + \
        result.quarantined
    with session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == result.accepted


# ---------------------------------------------------------------- products


def _ingest_products(engine, path: Path, now) -> dict[str, int]:
    with session_factory(engine)() as session, session.begin():
        return ingest_products(session, read_products(path), now).as_dict()


def test_products_are_upserted_by_sku(engine, now, tmp_path):
    assert _ingest_products(engine, FIXTURES / "products_shopify.jsonl", now)["accepted"] == 5
    assert _ingest_products(engine, FIXTURES / "products.csv", now)["accepted"] == 3
    assert _ingest_products(engine, FIXTURES / "products.csv", now) == {
        "received": 3, "accepted": 0, "updated": 0, "duplicates": 3, "quarantined": 0,
        "deferred": 0}
    restock = tmp_path / "restock.csv"
    restock.write_text("sku,title,category,tags,stock,weight,price\n"
                       "NW-GLS-002,Hand-Blown Carafe,Glassware,fragile|glass,12,900,72.00\n"
                       "NEW-1,New Thing,Misc,,5,100,9.50\n"
                       "NEW-2,,Misc,,5,100,9.50\n", encoding="utf-8")
    assert _ingest_products(engine, restock, now) == {
        "received": 3, "accepted": 1, "updated": 1, "duplicates": 0, "quarantined": 1,
        "deferred": 0}
    with session_factory(engine)() as session:
        carafe = session.scalars(select(Product).where(Product.sku == "NW-GLS-002")).one()
        assert (carafe.stock, carafe.tags, carafe.price) == (12, ["fragile", "glass"],
                                                            Decimal("72.00"))
        lotion = session.scalars(select(Product).where(Product.sku == "NW-SKN-003")).one()
        assert lotion.attributes["consumable_days"] == 45
        bad = session.scalars(select(Quarantine)).one()
        assert (bad.kind, bad.source, bad.reasons) == (
            "product", "csv", [{"field": "title", "reason": "required"}])
        assert session.scalar(select(func.count()).select_from(Product)) == 9


@pytest.mark.parametrize("path", [FIXTURES / "products_shopify.jsonl"])
def test_the_same_sku_twice_in_a_batch_keeps_the_last(engine, now, path):
    items = list(read_products(path))
    renamed = items[0].model_copy(update={"title": "Renamed"})
    with session_factory(engine)() as session, session.begin():
        result = ingest_products(session, [*items, renamed], now)
    assert (result.accepted, result.duplicates) == (len(items), 1)
    with session_factory(engine)() as session:
        assert session.scalars(select(Product.title).where(Product.sku == items[0].sku)).one() \
            == "Renamed"


def test_values_too_long_for_a_column_are_quarantined_not_a_database_error(engine, now, tmp_path):
    long_name = _shopify_record(0) | {"name": "#" + "9" * 80}
    long_sku = _shopify_record(1)
    long_sku["line_items"][0]["sku"] = "S" * 101
    path = _write_jsonl(tmp_path, "long.jsonl", [long_name, long_sku])
    assert _ingest_file(engine, path, now)["quarantined"] == 2
    with session_factory(engine)() as session:
        fields = sorted(q.reasons[0]["field"] for q in session.scalars(select(Quarantine)))
    assert fields == ["line_items[0].sku", "name"]


def test_versions_split_across_chunks_rerun_as_duplicates(engine, tmp_path, now, monkeypatch):
    """v1 and v2 of one order in different chunks: the rerun is all duplicates, no rollback."""
    monkeypatch.setattr("tasks.intake.ingest.CHUNK", 1)
    v1 = _shopify_record(0)
    v2 = dict(v1, note="Please leave at the back door")
    path = _write_jsonl(tmp_path, "both.jsonl", [v1, v2])
    first = _ingest_file(engine, path, now)
    assert (first["accepted"], first["updated"]) == (1, 1)
    before = _counts(engine)

    again = _ingest_file(engine, path, now.replace(hour=12))
    late_v1 = _ingest_file(engine, _write_jsonl(tmp_path, "late.jsonl", [v1]), now.replace(hour=13))

    assert (again["duplicates"], again["updated"]) == (2, 0)
    assert (late_v1["duplicates"], late_v1["updated"]) == (1, 0)
    assert _counts(engine) == before
    with session_factory(engine)() as session:
        assert _order(session, str(v1["id"])).customer_note == "Please leave at the back door"
