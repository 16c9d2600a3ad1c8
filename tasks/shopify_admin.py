"""Shopify Admin GraphQL for reconciliation: orders updated since an instant, as webhook bodies.

Webhooks get lost (Shopify retries a delivery 8 times over 4 hours, then deletes the
subscription) and Shopify advises running reconciliation jobs. This module asks the Admin API
for the orders updated since a watermark and turns each into the REST-shaped body an
`orders/updated` webhook carries, plus one `fulfillments/update` body per fulfillment, so the
inbox and intake treat them exactly like webhook deliveries. No Prefect here.

- `AdminClient`: one POST per GraphQL request; waits out Shopify's cost-based throttle (before a
  request that would overdraw the bucket, on a THROTTLED error, on HTTP 429) and retries 5xx.
- `updated_orders`: pages through orders(sortKey: UPDATED_AT), oldest change first.
- `rest_order` / `rest_fulfillment`: the mapping, in one place (the docstring lists its gaps).
- `deliveries`, `store_new`, `watermark`: the inbox side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks import inbox
from tasks.settings import Settings
from tasks.store.models import InboxDelivery

PROVIDER, ORDER_TOPIC, FULFILLMENT_TOPIC = "shopify", "orders/updated", "fulfillments/update"
DELIVERY_PREFIX = "reconcile:"
# Shopify's `updated_at:>` filter compares whole seconds and its search index can trail a write
# by a little: each run re-reads this much before the watermark (the repeats are duplicates).
OVERLAP = timedelta(minutes=5)
MAX_ATTEMPTS = 6  # per request, over THROTTLED, 429, 5xx and network errors together
MAX_WAIT = 60.0  # seconds; no single wait is longer (a Retry-After of an hour is not honoured)


class ShopifyError(RuntimeError):
    """The Admin API refused a request, or kept failing after the retries."""


# ---------------------------------------------------------------- the client


@dataclass
class Bucket:
    """Shopify's leaky bucket as the last response's `extensions.cost.throttleStatus` told it."""

    maximum: float
    available: float
    restore_rate: float
    seen_at: float  # the client's clock when the response arrived

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` points are available (a cost above the maximum: until full)."""
        refilled = self.available + self.restore_rate * max(0.0, now - self.seen_at)
        missing = min(cost, self.maximum) - min(self.maximum, refilled)
        return missing / self.restore_rate if missing > 0 and self.restore_rate > 0 else 0.0


@dataclass
class CallStats:
    requests: int = 0
    throttle_waits: int = 0
    waited_seconds: float = 0.0
    retries: int = 0


@dataclass
class AdminClient:
    """POST https://{shop}/admin/api/{version}/graphql.json with the app's access token.

    `clock` and `sleep` are injectable so tests can run throttling without waiting.
    """

    url: str
    token: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stats: CallStats = field(default_factory=CallStats)
    bucket: Bucket | None = None
    requested_cost: dict[str, float] = field(default_factory=dict)  # last cost per document

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> AdminClient:
        if not settings.shopify_admin_token or not (settings.shopify_shop
                                                    or settings.shopify_admin_url):
            raise ShopifyError("set JOURNEYS_SHOPIFY_SHOP and JOURNEYS_SHOPIFY_ADMIN_TOKEN to "
                               "reconcile with Shopify")
        base = (settings.shopify_admin_url or f"https://{settings.shopify_shop}").rstrip("/")
        return cls(f"{base}/admin/api/{settings.shopify_api_version}/graphql.json",
                   settings.shopify_admin_token, **kwargs)

    def query(self, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        """The response's `data`; throttling and transient failures are waited out and retried."""
        why = "no attempt made"
        for _attempt in range(MAX_ATTEMPTS):
            self._wait(self._budget_wait(document), throttled=True)
            try:
                response = self._post(document, variables)
            except httpx.TransportError as exc:
                why = f"network error: {exc}"
                self._retry(2.0 ** _attempt)
                continue
            if response.status_code == 429:
                why = "HTTP 429"
                self._retry(retry_after(response), throttled=True)
            elif response.status_code >= 500:
                why = f"HTTP {response.status_code}"
                self._retry(2.0 ** _attempt)
            elif response.status_code >= 400:
                raise ShopifyError(f"HTTP {response.status_code}: {response.text[:300]}")
            else:
                body = response.json()
                self._remember(document, body)
                if not is_throttled(body):
                    return data_of(body)
                why = "THROTTLED"
                self._retry(max(self._budget_wait(document), 1.0), throttled=True)
        raise ShopifyError(f"gave up after {MAX_ATTEMPTS} attempts ({why})")

    def _post(self, document: str, variables: dict[str, Any]) -> httpx.Response:
        self.stats.requests += 1
        return self.http.post(self.url, json={"query": document, "variables": variables},
                              headers={"X-Shopify-Access-Token": self.token})

    def _budget_wait(self, document: str) -> float:
        """How long until the bucket holds what this document cost last time."""
        cost = self.requested_cost.get(document)
        if self.bucket is None or cost is None:
            return 0.0
        return self.bucket.wait_for(cost, self.clock())

    def _remember(self, document: str, body: dict[str, Any]) -> None:
        cost = (body.get("extensions") or {}).get("cost") or {}
        status = cost.get("throttleStatus") or {}
        if cost.get("requestedQueryCost") is not None:
            self.requested_cost[document] = float(cost["requestedQueryCost"])
        if {"maximumAvailable", "currentlyAvailable", "restoreRate"} <= status.keys():
            self.bucket = Bucket(float(status["maximumAvailable"]),
                                 float(status["currentlyAvailable"]),
                                 float(status["restoreRate"]), self.clock())

    def _retry(self, seconds: float, throttled: bool = False) -> None:
        self.stats.retries += 1
        self._wait(seconds, throttled)

    def _wait(self, seconds: float, throttled: bool = False) -> None:
        if seconds <= 0:
            return
        seconds = min(seconds, MAX_WAIT)
        self.stats.throttle_waits += throttled
        self.stats.waited_seconds += seconds
        self.sleep(seconds)


def retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (Shopify sends a number); 2 s when absent or unreadable."""
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return 2.0


def is_throttled(body: dict[str, Any]) -> bool:
    errors = body.get("errors")
    return isinstance(errors, list) and any(
        isinstance(e, dict) and ((e.get("extensions") or {}).get("code") == "THROTTLED"
                                 or e.get("message") == "Throttled") for e in errors)


def data_of(body: dict[str, Any]) -> dict[str, Any]:
    """`data`, or the errors as a ShopifyError (MAX_COST_EXCEEDED: lower the page size)."""
    errors = body.get("errors")
    if errors:
        if isinstance(errors, list):
            errors = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e)
                               for e in errors)
        raise ShopifyError(f"Shopify refused the query: {str(errors)[:500]}")
    return body.get("data") or {}


# ---------------------------------------------------------------- the query

MONEY = "{ shopMoney { amount } }"
# Nested list sizes per order. Shopify prices a query before running it (a connection costs
# 2 + first x its nodes) and refuses one above 1,000 points, so a page asks for few nested items
# per order (~270 points per order) and an order that has more is fetched again on its own with
# the larger sizes (~700 points).
PAGE_LIMITS = {"lines": 10, "shipping": 3, "fulfillments": 3, "refunds": 3, "items": 10}
ALONE_LIMITS = {"lines": 50, "shipping": 5, "fulfillments": 5, "refunds": 5, "items": 10}


def order_fields(lines: int, shipping: int, fulfillments: int, refunds: int, items: int) -> str:
    """The Order selection (GraphQL Admin API 2025-07 names; see the fixtures' SOURCES.md)."""
    return f"""
      id legacyResourceId name email createdAt updatedAt cancelledAt currencyCode
      displayFinancialStatus taxesIncluded dutiesIncluded customerAcceptsMarketing
      customerLocale note tags discountCodes paymentGatewayNames
      subtotalPriceSet {MONEY} totalPriceSet {MONEY} totalTaxSet {MONEY}
      totalDiscountsSet {MONEY} totalTipReceivedSet {MONEY}
      originalTotalDutiesSet {MONEY} originalTotalAdditionalFeesSet {MONEY}
      taxLines {{ title rate priceSet {MONEY} }}
      customAttributes {{ key value }}
      shippingAddress {{ name firstName lastName address1 address2 city provinceCode zip
                         countryCodeV2 phone }}
      customer {{ id firstName lastName tags numberOfOrders
                  defaultEmailAddress {{ emailAddress marketingState }} }}
      shippingLines(first: {shipping}) {{ pageInfo {{ hasNextPage }} nodes {{
        code title originalPriceSet {MONEY}
        discountAllocations {{ allocatedAmountSet {MONEY} }} }} }}
      lineItems(first: {lines}) {{ pageInfo {{ hasNextPage }} nodes {{
        id sku title variantTitle quantity requiresShipping isGiftCard
        originalUnitPriceSet {MONEY} totalDiscountSet {MONEY} customAttributes {{ key value }}
        variant {{ id inventoryItem {{ measurement {{ weight {{ unit value }} }} }} }} }} }}
      fulfillments(first: {fulfillments}) {{
        id legacyResourceId name status createdAt updatedAt
        trackingInfo(first: 10) {{ company number url }}
        fulfillmentLineItems(first: {items}) {{ pageInfo {{ hasNextPage }} nodes {{
          quantity lineItem {{ id sku title variantTitle }} }} }} }}
      refunds(first: {refunds}) {{
        id legacyResourceId createdAt note totalRefundedSet {MONEY}
        refundLineItems(first: {items}) {{ pageInfo {{ hasNextPage }} nodes {{
          quantity restockType lineItem {{ id }} subtotalSet {MONEY} }} }} }}
    """


ORDERS_QUERY = f"""query ReconcileOrders($first: Int!, $after: String, $query: String) {{
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {order_fields(**PAGE_LIMITS)} }}
  }}
}}"""
ORDER_QUERY = f"""query ReconcileOrder($id: ID!) {{
  order(id: $id) {{ {order_fields(**ALONE_LIMITS)} }}
}}"""


@dataclass
class Page:
    """One page of orders as GraphQL nodes; `incomplete`: orders too large to map whole."""

    number: int
    nodes: list[dict[str, Any]]
    incomplete: list[str] = field(default_factory=list)


def updated_orders(client: AdminClient, since: datetime, page_size: int) -> Iterator[Page]:
    """Orders updated after `since`, oldest change first, a page at a time."""
    search = f"updated_at:>'{since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}'"
    after, number = None, 0
    while True:
        number += 1
        connection = client.query(ORDERS_QUERY, {"first": page_size, "after": after,
                                                 "query": search})["orders"]
        yield whole_orders(client, number, connection["nodes"])
        if not connection["pageInfo"]["hasNextPage"]:
            return
        after = connection["pageInfo"]["endCursor"]


def whole_orders(client: AdminClient, number: int, nodes: list[dict[str, Any]]) -> Page:
    """The page, each order with more nested items than the page asked for fetched alone."""
    page = Page(number, [])
    for node in nodes:
        if truncated(node, PAGE_LIMITS):
            node = client.query(ORDER_QUERY, {"id": node["id"]})["order"] or node
        if truncated(node, ALONE_LIMITS):
            page.incomplete.append(str(node.get("name") or node["id"]))
        else:
            page.nodes.append(node)
    return page


def truncated(node: dict[str, Any], limits: dict[str, int]) -> bool:
    """True if a nested list may hold more than was asked for."""
    more = [_more(node.get("lineItems")), _more(node.get("shippingLines"))]
    for key, limit, inner in (("fulfillments", limits["fulfillments"], "fulfillmentLineItems"),
                              ("refunds", limits["refunds"], "refundLineItems")):
        entries = node.get(key) or []
        more += [len(entries) >= limit] + [_more(entry.get(inner)) for entry in entries]
    return any(more)


def _more(connection: dict[str, Any] | None) -> bool:
    return bool(connection and (connection.get("pageInfo") or {}).get("hasNextPage"))


# ---------------------------------------------------------------- the mapping


def rest_order(node: dict[str, Any]) -> dict[str, Any]:
    """A GraphQL Order node → the REST order dict an `orders/updated` webhook carries, as far as
    tasks/intake/formats/shopify.py `shopify_order` and tasks/tracking/formats.py
    `shopify_fulfillment` read it. Money is the shop currency (`shopMoney`), as REST's unsuffixed
    fields are.

    Mapped: id (the numeric id of the gid), admin_graphql_api_id, name, email, created_at,
    updated_at, cancelled_at, currency, financial_status (displayFinancialStatus, lower case),
    subtotal_price, total_price, total_tax, total_discounts, total_tip_received,
    original_total_duties_set / original_total_additional_fees_set (shop_money), duties_included,
    taxes_included, buyer_accepts_marketing (customerAcceptsMarketing), customer_locale, note,
    note_attributes (customAttributes), tags (a list; intake splits either form), discount_codes
    (code only), tax_lines (title, rate, price), shipping_lines (code, title, original price,
    discount_allocations), line_items (id, variant_id, sku, title, variant_title, quantity,
    price = original unit price, total_discount, grams from the variant's inventory weight,
    requires_shipping, gift_card, properties), shipping_address, customer (id, email,
    first/last name, tags, orders_count, email_marketing_consent.state), fulfillments (see
    `rest_fulfillment`), refunds (id, created_at, note, total_refunded, refund_line_items:
    line_item_id, quantity, restock_type, subtotal).

    Not mapped (GraphQL has no such field, or intake does not read it): discount_codes amount and
    type (GraphQL gives the codes only), billing_address, per-line tax_lines and
    discount_allocations (total_discount carries the line's discounts), presentment money,
    order_number, checkout/cart tokens, source_name, customer locale/timezone, refund
    transactions and shipping refunds. `grams` is the variant's weight today, not at the sale.
    """
    customer = node.get("customer")
    return _compact({
        "id": numeric_id(node["id"]),
        "admin_graphql_api_id": node["id"],
        "name": node.get("name"),
        "email": node.get("email"),
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
        "cancelled_at": node.get("cancelledAt"),
        "currency": node.get("currencyCode"),
        "financial_status": _lower(node.get("displayFinancialStatus")),
        "subtotal_price": _money(node.get("subtotalPriceSet")),
        "total_price": _money(node.get("totalPriceSet")),
        "total_tax": _money(node.get("totalTaxSet")),
        "total_discounts": _money(node.get("totalDiscountsSet")),
        "total_tip_received": _money(node.get("totalTipReceivedSet")),
        "original_total_duties_set": _money_set(node.get("originalTotalDutiesSet")),
        "original_total_additional_fees_set": _money_set(
            node.get("originalTotalAdditionalFeesSet")),
        "duties_included": node.get("dutiesIncluded"),
        "taxes_included": node.get("taxesIncluded"),
        "buyer_accepts_marketing": node.get("customerAcceptsMarketing"),
        "customer_locale": node.get("customerLocale"),
        "note": node.get("note"),
        "note_attributes": _attributes(node.get("customAttributes")),
        "tags": node.get("tags"),
        "discount_codes": [{"code": code} for code in node.get("discountCodes") or []],
        "payment_gateway_names": node.get("paymentGatewayNames"),
        "tax_lines": [{"title": t.get("title"), "rate": t.get("rate"),
                       "price": _money(t.get("priceSet"))} for t in node.get("taxLines") or []],
        "shipping_lines": [_shipping_line(s) for s in _nodes(node.get("shippingLines"))],
        "line_items": [_line_item(item) for item in _nodes(node.get("lineItems"))],
        "shipping_address": _address(node.get("shippingAddress")),
        "customer": _customer(customer) if customer else None,
        "fulfillments": [rest_fulfillment(f, numeric_id(node["id"]))
                         for f in node.get("fulfillments") or []],
        "refunds": [_refund(r) for r in node.get("refunds") or []],
    })


def rest_fulfillment(node: dict[str, Any], order_id: int) -> dict[str, Any]:
    """A GraphQL Fulfillment → a REST fulfillment (the body of a `fulfillments/update` webhook):
    id, order_id, name, status (lower case), created_at, updated_at, tracking_company (the first
    trackingInfo's company), tracking_number(s) and tracking_url(s), line_items (id, sku, title,
    variant_title, quantity). Not mapped: shipment_status, location, service, receipt."""
    tracking = node.get("trackingInfo") or []
    numbers = [t["number"] for t in tracking if t.get("number")]
    urls = [t.get("url") for t in tracking if t.get("number")]
    return _compact({
        "id": numeric_id(node["id"]), "order_id": order_id, "name": node.get("name"),
        "status": _lower(node.get("status")), "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
        "tracking_company": next((t["company"] for t in tracking if t.get("company")), None),
        "tracking_number": numbers[0] if numbers else None, "tracking_numbers": numbers,
        "tracking_url": urls[0] if urls else None, "tracking_urls": urls,
        "line_items": [_fulfilled_item(i) for i in _nodes(node.get("fulfillmentLineItems"))],
    })


def numeric_id(gid: str) -> int:
    """gid://shopify/Order/5432100001 → 5432100001 (REST's id)."""
    return int(str(gid).rsplit("/", 1)[-1].split("?", 1)[0])


def _line_item(item: dict[str, Any]) -> dict[str, Any]:
    variant = item.get("variant") or {}
    return _compact({
        "id": numeric_id(item["id"]), "variant_id": variant.get("id") and numeric_id(variant["id"]),
        "sku": item.get("sku"), "title": item.get("title"),
        "variant_title": item.get("variantTitle"), "quantity": item.get("quantity"),
        "price": _money(item.get("originalUnitPriceSet")),
        "total_discount": _money(item.get("totalDiscountSet")),
        "grams": _grams(variant), "requires_shipping": item.get("requiresShipping"),
        "gift_card": item.get("isGiftCard"),
        "properties": _attributes(item.get("customAttributes")),
    })


GRAMS_PER = {"GRAMS": Decimal(1), "KILOGRAMS": Decimal(1000), "OUNCES": Decimal("28.349523125"),
             "POUNDS": Decimal("453.59237")}


def _grams(variant: dict[str, Any]) -> int | None:
    weight = (((variant.get("inventoryItem") or {}).get("measurement") or {}).get("weight")
              or {})
    if weight.get("value") is None or weight.get("unit") not in GRAMS_PER:
        return None
    return int((Decimal(str(weight["value"])) * GRAMS_PER[weight["unit"]]).to_integral_value())


def _shipping_line(line: dict[str, Any]) -> dict[str, Any]:
    return _compact({"code": line.get("code"), "title": line.get("title"),
                     "price": _money(line.get("originalPriceSet")),
                     "discount_allocations": [{"amount": _money(a.get("allocatedAmountSet"))}
                                              for a in line.get("discountAllocations") or []]})


def _address(address: dict[str, Any] | None) -> dict[str, Any] | None:
    if not address:
        return None
    return _compact({"name": address.get("name"), "first_name": address.get("firstName"),
                     "last_name": address.get("lastName"), "address1": address.get("address1"),
                     "address2": address.get("address2"), "city": address.get("city"),
                     "province_code": address.get("provinceCode"), "zip": address.get("zip"),
                     "country_code": address.get("countryCodeV2"), "phone": address.get("phone")})


def _customer(customer: dict[str, Any]) -> dict[str, Any]:
    email = customer.get("defaultEmailAddress") or {}
    count = customer.get("numberOfOrders")  # UnsignedInt64: a string in JSON
    return _compact({
        "id": numeric_id(customer["id"]), "email": email.get("emailAddress"),
        "first_name": customer.get("firstName"), "last_name": customer.get("lastName"),
        "tags": customer.get("tags"), "orders_count": int(count) if count is not None else None,
        "email_marketing_consent": ({"state": _lower(email["marketingState"])}
                                    if email.get("marketingState") else None),
    })


def _refund(refund: dict[str, Any]) -> dict[str, Any]:
    return _compact({
        "id": numeric_id(refund["id"]), "created_at": refund.get("createdAt"),
        "note": refund.get("note"), "total_refunded": _money(refund.get("totalRefundedSet")),
        "refund_line_items": [_refunded_item(r) for r in _nodes(refund.get("refundLineItems"))],
    })


def _refunded_item(item: dict[str, Any]) -> dict[str, Any]:
    line = item.get("lineItem") or {}
    return _compact({"line_item_id": line.get("id") and numeric_id(line["id"]),
                     "quantity": item.get("quantity"),
                     "restock_type": _lower(item.get("restockType")),
                     "subtotal": _money(item.get("subtotalSet"))})


def _fulfilled_item(item: dict[str, Any]) -> dict[str, Any]:
    line = item.get("lineItem") or {}
    return _compact({"id": line.get("id") and numeric_id(line["id"]), "sku": line.get("sku"),
                     "title": line.get("title"), "variant_title": line.get("variantTitle"),
                     "quantity": item.get("quantity")})


def _nodes(connection: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((connection or {}).get("nodes") or [])


def _money(money_bag: dict[str, Any] | None) -> str | None:
    return ((money_bag or {}).get("shopMoney") or {}).get("amount")


def _money_set(money_bag: dict[str, Any] | None) -> dict[str, Any] | None:
    amount = _money(money_bag)
    return None if amount is None else {"shop_money": {"amount": amount}}


def _attributes(pairs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [{"name": p.get("key"), "value": p.get("value")} for p in pairs or []]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# ---------------------------------------------------------------- into the inbox


def deliveries(order: dict[str, Any], shop: str | None = None) -> list[inbox.Delivery]:
    """A REST-shaped order as the inbox deliveries a webhook would have made: the order, and
    each fulfillment. Ids carry the version (`updated_at`), so the same version is stored once."""
    found = [_delivery(ORDER_TOPIC, f"{order['id']}:{order['updated_at']}", order,
                       order["updated_at"], shop)]
    for fulfillment in order.get("fulfillments", []):
        stamp = fulfillment.get("updated_at") or order["updated_at"]
        found.append(_delivery(FULFILLMENT_TOPIC, f"fulfillment:{fulfillment['id']}:{stamp}",
                               fulfillment, stamp, shop))
    return found


def _delivery(topic: str, key: str, body: dict[str, Any], stamp: str, shop: str | None
              ) -> inbox.Delivery:
    return inbox.Delivery(provider=PROVIDER, topic=topic, delivery_id=DELIVERY_PREFIX + key,
                          body=json.dumps(body, separators=(",", ":")).encode(),
                          triggered_at=instant(stamp), shop=shop)


def instant(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def store_new(session: Session, found: Sequence[inbox.Delivery], now: datetime) -> int:
    """Store the deliveries the inbox does not hold yet; how many that was."""
    table = InboxDelivery.__table__
    unique = {d.delivery_id: d for d in found}
    known = set(session.scalars(select(table.c.delivery_id).where(
        table.c.provider == PROVIDER, table.c.delivery_id.in_(unique)))) if unique else set()
    fresh = [d for key, d in unique.items() if key not in known]
    inbox.store(session, fresh, now)
    return len(fresh)


def watermark(session: Session) -> datetime | None:
    """The newest order version reconciliation stored (webhook deliveries do not count: one
    arriving says nothing of the ones before it). Pages are stored oldest change first, each in
    its own transaction, so everything updated before this instant is in the inbox."""
    table = InboxDelivery.__table__
    newest = session.scalar(select(func.max(table.c.triggered_at)).where(
        table.c.provider == PROVIDER, table.c.topic == ORDER_TOPIC,
        table.c.delivery_id.like(DELIVERY_PREFIX + "%")))
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return newest


def since_when(session: Session, now: datetime, lookback: timedelta) -> datetime:
    """Where a run starts: the watermark less the overlap, else `lookback` before now."""
    newest = watermark(session)
    return newest - OVERLAP if newest is not None else now - lookback
