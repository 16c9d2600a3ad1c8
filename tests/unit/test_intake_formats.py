"""Reading orders and products: every format maps into the canonical schema, bad records reject."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tasks.intake import IntakeError, OrderIn, ProductIn, Rejected, read_orders, read_products
from tests.conftest import FIXTURES


def _by_id(records: list[OrderIn | Rejected]) -> dict[str, OrderIn]:
    return {r.external_id: r for r in records if isinstance(r, OrderIn)}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _fields(rejected: Rejected) -> dict[str, str]:
    return {reason["field"]: reason["reason"] for reason in rejected.reasons}


# ---------------------------------------------------------------- Shopify


def test_shopify_order_maps_money_discounts_shipping_and_consent():
    orders = _by_id(list(read_orders(FIXTURES / "orders_shopify.jsonl")))
    order = orders["5432100001"]
    assert order.source == "shopify" and order.name == "#1001"
    assert order.email == "ava.nguyen@example.com"
    assert order.placed_at == datetime(2026, 11, 17, 17, 15, 42, tzinfo=UTC)
    assert (order.subtotal, order.discounts, order.tax, order.total) == (
        Decimal("127.50"), Decimal("22.50"), Decimal("10.20"), Decimal("149.70"))
    assert order.taxes_included is False
    assert order.discount_codes[0].code == "FALL15"
    assert order.discount_codes[0].amount == Decimal("22.50")
    # two shipping lines are summed; code and title come from the first
    assert (order.shipping.code, order.shipping.price) == ("STANDARD", Decimal("12.00"))
    assert order.accepts_marketing is True  # buyer_accepts_marketing, though the customer said no
    assert order.customer.tags == ["VIP", "newsletter"]
    assert [(line.sku, line.quantity, line.unit_price) for line in order.lines] == [
        ("NW-APP-001-M", 1, Decimal("98.00")), ("NW-CER-001-SAND", 2, Decimal("26.00"))]
    assert order.lines[0].properties == {"Monogram": "AN"}
    assert order.shipping_address is not None and order.shipping_address.zip == "97204"


def test_shopify_gift_note_taxes_included_and_currency_case():
    orders = _by_id(list(read_orders(FIXTURES / "orders_shopify.jsonl")))
    gift = orders["5432100002"]
    assert gift.taxes_included is True and gift.total == Decimal("151.00")
    assert gift.gift_note == "Happy birthday, Sam! Love, Oliver"  # the gift_message attribute
    assert gift.note_attributes == {"gift_message": "Happy birthday, Sam! Love, Oliver",
                                    "gift_wrap": "yes"}
    assert gift.tags == ["gift", "priority"]
    assert gift.customer.tags == []  # Shopify's "" means no tags
    canadian = orders["5432100003"]
    assert canadian.currency == "CAD"
    assert canadian.accepts_marketing is True  # email_marketing_consent: subscribed
    assert canadian.lines[0].total_discount == Decimal("10.00")
    assert canadian.locale == "fr-CA"


def test_shopify_note_is_the_customer_note_never_the_gift_note(tmp_path):
    record = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[1])
    record["note_attributes"] = []
    path = _write(tmp_path, "one.jsonl", json.dumps(record) + "\n")
    [order] = read_orders(path)
    assert order.customer_note == "Please deliver to the neighbour if nobody is home."
    assert order.gift_note is None  # issue 13: `note` is the buyer's note to the store


# ---------------------------------------------------------------- canonical and CSV


def test_canonical_keeps_its_source_and_treats_naive_times_as_utc():
    orders = _by_id(list(read_orders(FIXTURES / "orders_canonical.jsonl")))
    market, plain = orders["MP-77001"], orders["CN-2001"]
    assert market.source == "marketplace" and plain.source == "canonical"
    assert market.placed_at == datetime(2026, 11, 17, 19, 30, tzinfo=UTC)
    assert plain.placed_at == datetime(2026, 11, 18, 8, 0, tzinfo=UTC)
    assert market.shipping_address is not None and market.shipping_address.country_code == "DE"
    assert market.accepts_marketing is True  # the customer's consent counts for the order
    # subtotal and total computed: goods − discounts; + shipping, + tax unless included
    assert (market.subtotal, market.total) == (Decimal("88.00"), Decimal("92.90"))
    assert (plain.subtotal, plain.total) == (Decimal("63.00"), Decimal("91.72"))


def test_csv_rows_group_into_orders_even_when_not_adjacent():
    orders = _by_id(list(read_orders(FIXTURES / "orders.csv")))
    assert list(orders) == ["7001", "7002"]
    maya = orders["7001"]
    assert maya.source == "csv" and maya.email == "maya.okafor@example.com"
    assert [line.sku for line in maya.lines] == ["NW-ELE-002", "NW-APP-002-M"]
    assert maya.subtotal == Decimal("145.00")  # 99 + 2 × 28 − 10
    assert maya.total == Decimal("164.04")  # computed: no total column value
    assert maya.gift_note == "A little something for you"
    assert maya.accepts_marketing is True and maya.customer.first_name == "Maya"
    assert maya.origin() == "orders.csv:lines 2-4"
    assert orders["7002"].total == Decimal("71.46")  # given


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(("name", "expected"), [
    ("orders_shopify.jsonl", "shopify"), ("orders_canonical.jsonl", "canonical"),
    ("orders.csv", "csv")])
def test_order_format_is_detected_from_content(name, expected, tmp_path):
    copy = _write(tmp_path, "upload.dat", (FIXTURES / name).read_text(encoding="utf-8"))
    detected = list(read_orders(copy))  # read as what the content says, not the file name
    assert detected == list(read_orders(copy, fmt=expected))
    assert detected and not any(isinstance(record, Rejected) for record in detected)


@pytest.mark.parametrize(("name", "expected"), [
    ("products_shopify.jsonl", "shopify"), ("products.csv", "csv")])
def test_product_format_is_detected(name, expected):
    detected = list(read_products(FIXTURES / name))
    assert detected == list(read_products(FIXTURES / name, fmt=expected))
    assert detected and not any(isinstance(record, Rejected) for record in detected)


def test_format_override_is_used(tmp_path):
    # A canonical record read as Shopify has no line_items: quarantined, not guessed.
    records = list(read_orders(FIXTURES / "orders_canonical.jsonl", fmt="shopify"))
    assert all(isinstance(r, Rejected) for r in records)
    assert _fields(records[0]) == {"note_attributes": "expected a list of objects"}
    assert _fields(records[1])["line_items"] == "an order needs at least one line item"


@pytest.mark.parametrize(("content", "message"), [
    (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xb8\xff\xfe", "cannot detect format"),
    (b"just some words\n", "cannot detect format"),
    (b'[{"id": 1}]\n', "cannot detect format"),
    (b'{"tracking_number": "1Z"}\n', "neither `line_items` nor `lines`"),
    (b"order_id,email\n1,a@b.c\n", "missing columns placed_at, currency, quantity, unit_price"),
    (b"", "the file is empty"),
])
def test_unreadable_files_raise_a_one_line_intake_error(tmp_path, content, message):
    path = tmp_path / "orders.xlsx"
    path.write_bytes(content)
    with pytest.raises(IntakeError, match=message) as caught:
        list(read_orders(path))
    assert "\n" not in str(caught.value) and str(caught.value).startswith("orders.xlsx")


def test_missing_file_and_unknown_format_raise_intake_error(tmp_path):
    with pytest.raises(IntakeError, match="no such file"):
        read_orders(tmp_path / "nope.jsonl")
    with pytest.raises(IntakeError, match="unknown format 'xml'"):
        read_orders(FIXTURES / "orders.csv", fmt="xml")


def test_invalid_utf8_after_the_first_lines_is_an_intake_error(tmp_path):
    path = tmp_path / "orders.jsonl"
    good = (FIXTURES / "orders_shopify.jsonl").read_bytes()
    path.write_bytes(good * 40 + b"\xff\xfe broken\n")  # past detection and the read buffer
    with pytest.raises(IntakeError, match="not UTF-8"):
        list(read_orders(path))


# ---------------------------------------------------------------- rejections


def _bad_shopify_file(tmp_path: Path) -> Path:
    good = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0])
    no_email = good | {"id": 2, "email": None, "contact_email": None, "customer": None}
    bad_money = good | {"id": 3, "currency": "XYZ", "line_items": [
        good["line_items"][0] | {"price": "-5.00", "quantity": 0}]}
    no_lines = good | {"id": 4, "line_items": []}
    bad_shipping = good | {"id": 5, "shipping_lines": [{"code": "X", "price": "free"}]}
    nan_total = good | {"id": 6, "total_price": "NaN"}
    lines = [json.dumps(good), "{not json", json.dumps(no_email), json.dumps(bad_money),
             "", json.dumps(no_lines), json.dumps(bad_shipping), "[1, 2]", json.dumps(nan_total)]
    return _write(tmp_path, "mixed.jsonl", "\n".join(lines) + "\n")


def test_bad_records_reject_with_per_field_reasons_and_the_rest_still_parse(tmp_path):
    records = list(read_orders(_bad_shopify_file(tmp_path)))
    accepted = [r for r in records if isinstance(r, OrderIn)]
    rejected = {r.origin: r for r in records if isinstance(r, Rejected)}
    assert [o.external_id for o in accepted] == ["5432100001", "2"]  # no e-mail is fine
    assert set(rejected) == {f"mixed.jsonl:line {n}" for n in (2, 4, 6, 7, 8, 9)}
    assert _fields(rejected["mixed.jsonl:line 2"])["_record"].startswith("not valid JSON")
    money = _fields(rejected["mixed.jsonl:line 4"])
    assert set(money) == {"currency", "line_items[0].price", "line_items[0].quantity"}
    assert "XYZ" in money["currency"] and "greater than or equal to 0" in money[
        "line_items[0].price"]
    assert _fields(rejected["mixed.jsonl:line 6"]) == {
        "line_items": "an order needs at least one line item"}
    assert _fields(rejected["mixed.jsonl:line 7"]) == {
        "shipping_lines[0].price": "not a number: 'free'"}
    assert _fields(rejected["mixed.jsonl:line 8"]) == {"_record": "expected a JSON object"}
    assert _fields(rejected["mixed.jsonl:line 9"]) == {
        "total_price": "Input should be a finite number"}
    assert rejected["mixed.jsonl:line 4"].external_id == "3"
    assert all(r.kind == "order" and r.source == "shopify" for r in rejected.values())


def test_csv_reasons_name_the_column_and_the_file_line(tmp_path):
    header = (FIXTURES / "orders.csv").read_text().splitlines()[0]
    rows = [
        "8001,#8001,,2026-11-17T10:00:00Z,USD,paid,A,B,no,A B,1 Main St,,Portland,OR,97204,US,"
        "STANDARD,Standard,8.00,0,0,false,,,SKU-1,Thing,,1,10.00",
        "8001,#8001,,2026-11-17T10:00:00Z,USD,paid,A,B,no,A B,1 Main St,,Portland,OR,97204,US,"
        "STANDARD,Standard,8.00,0,0,false,,,SKU-2,Other,,two,10.00",
        ",#8002,x@y.z,2026-11-17T10:00:00Z,USD,paid,A,B,no,,,,,,,,,,,,,,,,SKU-3,T,,1,1.00",
    ]
    path = _write(tmp_path, "orders.csv", "\n".join([header, *rows]) + "\n")
    first, second = read_orders(path)
    assert isinstance(first, Rejected) and isinstance(second, Rejected)
    assert first.origin == "orders.csv:line 4" and _fields(first) == {"order_id": "required"}
    assert second.origin == "orders.csv:lines 2-3"
    reasons = _fields(second)
    assert "email" not in reasons  # an order without e-mail is fine (issue 13)
    assert "integer" in reasons["quantity (line 3)"]


# ---------------------------------------------------------------- products


def test_shopify_products_become_one_product_per_variant():
    products = {p.sku: p for p in read_products(FIXTURES / "products_shopify.jsonl")}
    assert list(products) == ["NW-APP-001-S", "NW-APP-001-M", "NW-APP-001-L", "NW-GLS-002",
                              "NW-SKN-001"]
    sweater = products["NW-APP-001-M"]
    assert sweater.title == "Merino Crew Sweater - M"
    assert (sweater.category, sweater.tags) == ("apparel", ["wool", "winter"])
    assert (sweater.stock, sweater.grams, sweater.price) == (22, 380, Decimal("98.00"))
    assert sweater.attributes == {"care_guide": "Wash cold, hang dry.",  # + Shopify's ids
                                  "shopify_product_id": "8000000001",
                                  "shopify_variant_id": "800000000102"}
    assert products["NW-GLS-002"].title == "Hand-Blown Carafe"  # "Default Title" dropped
    assert products["NW-GLS-002"].tags == ["fragile", "glass"]
    assert products["NW-SKN-001"].attributes["consumable_days"] == 30


def test_csv_products_split_tags_and_read_attributes():
    products = {p.sku: p for p in read_products(FIXTURES / "products.csv")}
    assert products["NW-FUR-001"].tags == ["oversized", "heavy", "oak"]
    assert products["NW-FUR-001"].grams == 22000
    assert products["NW-JWL-002"].tags == ["diamond", "gift"]
    assert products["NW-SKN-003"].attributes == {"consumable_days": 45,
                                                 "care_guide": "Store below 25 °C"}


def test_bad_product_rows_reject_and_good_variants_survive(tmp_path):
    product = {"id": 9, "title": "Mug", "product_type": "Ceramics", "tags": "fragile", "variants": [
        {"title": "Blue", "sku": "MUG-B", "price": "12.00", "grams": 300, "inventory_quantity": 5},
        {"title": "Red", "sku": "", "price": "-1", "grams": 300, "inventory_quantity": 5}]}
    shopify = _write(tmp_path, "p.jsonl", json.dumps(product) + "\n")
    good, bad = read_products(shopify)
    assert isinstance(good, ProductIn) and good.sku == "MUG-B"
    assert isinstance(bad, Rejected) and bad.kind == "product"
    assert set(_fields(bad)) == {"variants[1].sku", "variants[1].price"}
    csv_path = _write(tmp_path, "p.csv", "sku,title,stock,weight,price,attributes\n"
                      "A-1,Thing,3,-2,1.00,\nA-2,Other,1,1,1.00,{broken\n")
    first, second = read_products(csv_path)
    assert _fields(first) == {"weight": "Input should be greater than or equal to 0"}
    assert _fields(second)["attributes"].startswith("not valid JSON")
    assert second.origin == "p.csv:line 3"


def test_amounts_the_database_cannot_store_exactly_are_refused():
    import pytest
    from pydantic import ValidationError

    from tasks.intake.schema import OrderIn

    base = {"external_id": "X1", "email": "a@example.com", "placed_at": "2026-11-17T10:00:00Z",
            "currency": "USD", "financial_status": "paid"}
    line = {"title": "T", "quantity": 1, "unit_price": "10.00"}
    assert OrderIn.model_validate({**base, "lines": [line]}).total == 10
    with pytest.raises(ValidationError, match="decimal places"):
        OrderIn.model_validate({**base, "lines": [line | {"unit_price": "10.00005"}]})
    with pytest.raises(ValidationError, match="too large"):
        OrderIn.model_validate({**base, "lines": [line | {"unit_price": "99999999999999",
                                                          "quantity": 1000}]})
