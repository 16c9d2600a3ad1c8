"""How an order was paid: Shopify's gateway names through intake onto the invoice."""

from __future__ import annotations

import json

from sqlalchemy import select

from tasks.documents import document_context, documents_dir, render_document
from tasks.intake.formats import order_from_json
from tasks.intake.ingest import ingest_orders
from tasks.shopify_admin import rest_order
from tasks.store.db import session_scope
from tasks.store.models import Order
from tests.conftest import FIXTURES

REAL = FIXTURES / "real" / "shopify" / "orders__create"


def test_gateway_names_are_stored_and_printed_on_the_invoice(engine, runtime, now):
    bodies = [json.loads((REAL / "sdk-order-450789469-refund-fulfillment.json").read_text()),
              json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0]),
              json.loads((FIXTURES / "real_orders" / "gift_card_only.json").read_text())]
    items = [order_from_json(b, "shopify", json.dumps(b), f"t:{i}") for i, b in enumerate(bodies)]
    with session_scope(engine) as session:
        assert ingest_orders(session, items, now).accepted == 3
    with session_scope(engine) as session:
        stored = {o.external_id: o for o in session.scalars(select(Order))}
        paid = {k: o.payment_gateways for k, o in stored.items()}
        html = render_document(documents_dir(runtime.config), "invoice", document_context(
            stored["5432100001"], {}, runtime.config.store))
    assert paid == {"450789469": ["bogus"], "5432100001": ["shopify_payments"],
                    "5600000002": None}  # payment_gateway_names, `gateway`, neither
    assert "Paid with: Shopify Payments" in html


def test_an_order_without_gateways_hashes_as_before(engine, now):
    """The new field is left out of the payload hash at its default: stored orders stay equal."""
    body = json.loads((FIXTURES / "real_orders" / "gift_card_only.json").read_text())
    item = order_from_json(body, "shopify", json.dumps(body), "t:1")
    assert "payment_gateways" not in item.canonical_json()


def test_the_graphql_mapping_carries_the_gateway_names():
    node = json.loads((FIXTURES / "real_shopify_graphql" / "orders_page_1.json").read_text())[
        "data"]["orders"]["nodes"][0] | {"paymentGatewayNames": ["shopify_payments"]}
    assert rest_order(node)["payment_gateway_names"] == ["shopify_payments"]
