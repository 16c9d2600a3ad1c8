"""Review requests, the compliant way (US FTC 16 CFR Part 465; Google's review policy).

Every delivered order's customer is asked to review every product, the same way, whatever they
said in the delivery survey: nothing here reads ratings or sentiment. The only hold is an open
service case on the order (the step is due again later and goes out once the case is resolved).
Limits that do apply to everyone alike: one request per customer and product per 12 months, and
at most N requests per customer per 30 days; a request dropped by a limit is kept as a message
row with status "skipped" and its reason, so it stays visible. A product whose every unit the
customer sent back in a return is not asked about (reason "returned"): that is not filtering by
sentiment, the customer no longer has it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.aftercare import aftercare_config, close_missing
from tasks.config import ConfigError
from tasks.config.aftercare import ReviewRules
from tasks.journey import StageResult
from tasks.links import Purpose, link_url
from tasks.messaging.compose import base_context, order_key, order_mail
from tasks.messaging.outbox import enqueue, store_skipped
from tasks.runtime import Runtime
from tasks.states import MessageStatus
from tasks.store.journal import finish_steps, reschedule_steps
from tasks.store.loaders import delivered_orders, products_by_sku
from tasks.store.models import FeedbackResponse, Message, Order, OrderLine, Product, ServiceCase
from tasks.store.returns import returned_skus
from tasks.storefront.reviews import product_name, product_slug

STEP = TEMPLATE = "review_request"
SKIPPED = MessageStatus.SKIPPED
HOLD_REASON = "held: service case open"
RETURNED = "returned"
CAP_WINDOW = timedelta(days=30)


def review_request(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
) -> StageResult:
    """One request per delivered order and SKU; held while a service case is open."""
    rules = aftercare_config(rt.config).reviews
    orders = delivered_orders(session, order_ids)
    held = orders_with_open_case(session, [o.id for o in orders])
    due_again = now + timedelta(hours=rules.hold_retry_hours)
    reschedule_steps(session, STEP, {oid: due_again for oid in held}, HOLD_REASON, now)
    ready = [o for o in orders if o.id not in held]
    asks, skips = plan_requests(session, ready, now, rules)
    products = products_by_sku(session, {line.sku for _, line in asks} | {s[1].sku for s in skips})
    enqueue(session, [request_message(o, line, products, rt, now) for o, line in asks], now)
    skipped = [(request_message(o, line, products, rt, now), why) for o, line, why in skips]
    store_skipped(session, skipped, now)
    finish_steps(session, STEP, {o.id: None for o in ready}, now)
    closed = close_missing(session, STEP, order_ids, [o.id for o in orders], now)
    returned = sum(why == RETURNED for _, _, why in skips)
    return StageResult(stage=STEP, advanced=len(ready), held=len(held), closed=closed,
                       details={"messages_enqueued": len(asks), "requests_skipped": len(skips),
                                **({"requests_skipped_returned": returned} if returned else {})})


def orders_with_open_case(session: Session, order_ids: Sequence[int]) -> set[int]:
    if not order_ids:
        return set()
    query = select(ServiceCase.order_id).where(
        ServiceCase.order_id.in_(order_ids), ServiceCase.status == "open"
    )
    return set(session.scalars(query))


def reviewable_lines(order: Order) -> list[OrderLine]:
    """One line per distinct SKU (gift cards and lines without a SKU have nothing to review)."""
    seen: dict[str, OrderLine] = {}
    for line in order.lines:
        if line.sku and not line.gift_card:
            seen.setdefault(line.sku, line)
    return list(seen.values())


def previous_requests(
    session: Session, orders: Sequence[Order], now: datetime, rules: ReviewRules
) -> list[tuple[int, str | None, datetime]]:
    """(customer, sku, when) of review requests made to these customers by other orders."""
    customers = {o.customer_id for o in orders}
    if not customers:
        return []
    since = now - max(timedelta(days=rules.product_repeat_days), CAP_WINDOW)
    query = select(Message.customer_id, Message.topic, Message.created_at).where(
        Message.template == TEMPLATE, Message.customer_id.in_(customers),
        Message.status != SKIPPED, Message.created_at >= since,
        Message.order_id.not_in([o.id for o in orders]),
    )
    return [(c, t, at) for c, t, at in session.execute(query)]


def plan_requests(
    session: Session, orders: Sequence[Order], now: datetime, rules: ReviewRules
) -> tuple[list[tuple[Order, OrderLine]], list[tuple[Order, OrderLine, str]]]:
    """Which (order, line) to ask about and which to skip with a reason, customer by customer."""
    repeat_since = now - timedelta(days=rules.product_repeat_days)
    returned = returned_skus(session, [o.id for o in orders])
    asked: dict[int, set[str]] = defaultdict(set)
    recent: dict[int, int] = defaultdict(int)
    for customer_id, sku, at in previous_requests(session, orders, now, rules):
        if at >= repeat_since and sku:
            asked[customer_id].add(sku)
        if at >= now - CAP_WINDOW:
            recent[customer_id] += 1
    asks: list[tuple[Order, OrderLine]] = []
    skips: list[tuple[Order, OrderLine, str]] = []
    for order in sorted(orders, key=lambda o: (o.customer_id, o.id)):
        for line in reviewable_lines(order):
            why = RETURNED if line.sku in returned.get(order.id, ()) else _skip_reason(
                order.customer_id, line.sku, asked, recent, rules)
            if why:
                skips.append((order, line, why))
                continue
            asks.append((order, line))
            asked[order.customer_id].add(line.sku)  # type: ignore[arg-type]
            recent[order.customer_id] += 1
    return asks, skips


def _skip_reason(
    customer_id: int, sku: str | None, asked: dict[int, set[str]], recent: dict[int, int],
    rules: ReviewRules,
) -> str | None:
    if sku in asked[customer_id]:
        return f"already asked to review {sku} within {rules.product_repeat_days} days"
    if recent[customer_id] >= rules.per_customer_30_days:
        return f"cap: {rules.per_customer_30_days} review requests per customer per 30 days"
    return None


def review_url(order: Order, line: OrderLine, product: Product | None, name: str, rt: Runtime,
               now: datetime) -> str:
    """Our /r/{token} page for this order line, or the store's review platform (Judge.me,
    Yotpo, Okendo ...) with {sku}, {product} (handle) and {order} (the store's order name,
    never our id) filled in."""
    cfg = rt.config
    rules = cfg.pages.reviews
    if rules.platform == "journeys":
        return link_url(cfg.store.links_base_url, rt.settings.secret_key, Purpose.REVIEW,
                        order.id, now, extra=line.id)
    template = rules.platform_urls.get(rules.platform)
    if not template:
        raise ConfigError(f"pages.yaml reviews: platform {rules.platform!r} has no entry in "
                          "platform_urls")
    sku = line.sku or ""
    fill = {"sku": sku, "product": product_slug(product, name, sku),
            "order": order.name or order.external_id}
    return template.format_map({key: quote(value, safe="") for key, value in fill.items()})


def request_message(
    order: Order, line: OrderLine, products: Mapping[str, Product], rt: Runtime, now: datetime
) -> dict[str, Any]:
    """The same request for everyone: the product (not the variant), and a link to write the
    review."""
    sku = line.sku or ""
    product = products.get(sku)
    name = product_name(line, product.title if product else None)
    context = base_context(order, rt.config)
    context["product"] = {
        "sku": sku, "title": name, "variant": line.variant_title,
        "review_url": review_url(order, line, product, name, rt, now),
    }
    key = order_key(rt.config, order, STEP, sku, TEMPLATE)  # one request per SKU
    return order_mail(rt.config, order, STEP, TEMPLATE, context, now, key=key, topic=sku)


def review_rates_by_rating(session: Session) -> dict[int | None, dict[str, float]]:
    """Delivered orders and those asked for a review, by survey rating (None: no answer).

    Equal rates across ratings show that requests do not depend on what customers said.
    """
    latest: dict[int, int] = {}
    for order_id, rating in session.execute(
        select(FeedbackResponse.order_id, FeedbackResponse.rating)
        .where(FeedbackResponse.rating.is_not(None)).order_by(FeedbackResponse.id)
    ):  # the delivery survey's ratings (a fit answer has none)
        latest[order_id] = rating
    delivered = session.scalars(select(Order.id).where(Order.delivered_at.is_not(None)))
    requested = set(session.scalars(
        select(Message.order_id).where(Message.template == TEMPLATE, Message.status != SKIPPED)
        .distinct()
    ))
    table: dict[int | None, dict[str, float]] = {}
    for order_id in delivered:
        row = table.setdefault(latest.get(order_id), {"delivered": 0, "requested": 0})
        row["delivered"] += 1
        row["requested"] += order_id in requested
    for row in table.values():
        row["rate"] = row["requested"] / row["delivered"]
    return table
