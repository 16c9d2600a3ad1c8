"""Review requests, the compliant way (US FTC 16 CFR Part 465; Google's review policy).

Every delivered order's customer is asked to review every product, the same way, whatever they
said in the delivery survey: nothing here reads ratings or sentiment. The only hold is an open
service case on the order (the step is due again later and goes out once the case is resolved).
Limits that do apply to everyone alike: one request per customer and product per 12 months, and
at most N requests per customer per 30 days; a request dropped by a limit is kept as a message
row with status "skipped" and its reason, so it stays visible. A product whose every unit the
customer sent back in a return is not asked about (reason "returned"): that is not filtering by
sentiment, the customer no longer has it.

Consent, by the order's ship-to country (configs/aftercare.yaml `reviews.consent`): a customer
with marketing consent is asked by marketing mail (the governor's rules apply at send time);
one without is asked only where the merchant allows it, by transactional mail, and never at a
suppressed address or one that turned the reviews topic off (checked here: the governor does
not hold transactional mail for those). Elsewhere the request is kept skipped with the reason.
`review_request_counts` tells the report why requests were not sent.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.aftercare import aftercare_config, close_missing
from tasks.aftercare.followups import product_title, variant_of
from tasks.config import ConfigError
from tasks.config.aftercare import ReviewRules
from tasks.journey import StageResult
from tasks.links import Purpose, link_url
from tasks.messaging.compose import base_context, order_key, order_mail
from tasks.messaging.governor import (
    email_hash,
    load_suppressions,
    load_topics_off,
    topics_by_template,
)
from tasks.messaging.outbox import enqueue, store_skipped
from tasks.runtime import Runtime
from tasks.states import MessageStatus
from tasks.store.journal import finish_steps, reschedule_steps
from tasks.store.loaders import delivered_orders, products_by_sku
from tasks.store.models import FeedbackResponse, Message, Order, OrderLine, Product, ServiceCase
from tasks.store.returns import returned_skus
from tasks.storefront.reviews import product_slug

STEP = TEMPLATE = "review_request"
SKIPPED = MessageStatus.SKIPPED
HOLD_REASON = "held: service case open"
RETURNED = "returned"
NO_CONSENT = "no marketing consent"
CAP_WINDOW = timedelta(days=30)
# The class of a request to a customer without marketing consent, where the merchant allows it.
FOLLOW_UP = "transactional"
SENT_STATUSES = (MessageStatus.SENT, MessageStatus.UNKNOWN)  # may have reached the customer
WAITING_STATUSES = (MessageStatus.PENDING, MessageStatus.SENDING)


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
    blocked, follow_up = consent_verdicts(session, ready, rules, rt)
    asks, skips = plan_requests(session, ready, now, rules, blocked)
    products = products_by_sku(session, {line.sku for _, line in asks} | {s[1].sku for s in skips})

    def message(order: Order, line: OrderLine) -> dict[str, Any]:
        return request_message(order, line, products, rt, now, order.id in follow_up)

    enqueue(session, [message(o, line) for o, line in asks], now)
    store_skipped(session, [(message(o, line), why) for o, line, why in skips], now)
    finish_steps(session, STEP, step_reasons(ready, asks, skips), now)
    closed = close_missing(session, STEP, order_ids, [o.id for o in orders], now)
    return StageResult(stage=STEP, advanced=len(ready), held=len(held), closed=closed,
                       details=stage_details(asks, skips, follow_up))


def stage_details(
    asks: Sequence[tuple[Order, OrderLine]], skips: Sequence[tuple[Order, OrderLine, str]],
    follow_up: set[int],
) -> dict[str, int]:
    """The run's counts: requests queued, skipped (returned, no consent) and follow-ups."""
    details = {"messages_enqueued": len(asks), "requests_skipped": len(skips)}
    optional = {
        "requests_skipped_returned": sum(why == RETURNED for _, _, why in skips),
        "requests_skipped_no_consent": sum(why.startswith(NO_CONSENT) for _, _, why in skips),
        "requests_as_follow_up": sum(o.id in follow_up for o, _ in asks),
    }
    return details | {name: n for name, n in optional.items() if n}


def step_reasons(
    orders: Sequence[Order], asks: Sequence[tuple[Order, OrderLine]],
    skips: Sequence[tuple[Order, OrderLine, str]],
) -> dict[int, str | None]:
    """The step's reason for an order none of whose products was asked about; each skipped
    request keeps its own reason on its message row."""
    asked = {o.id for o, _ in asks}
    why: dict[int, set[str]] = defaultdict(set)
    for order, _, reason in skips:
        why[order.id].add(reason)
    return {o.id: None if o.id in asked or not why[o.id]
            else "no review request sent: " + "; ".join(sorted(why[o.id])) for o in orders}


# ---------------------------------------------------------------- consent by region


class _Address(NamedTuple):
    to_addr: str  # what the governor's suppression loader reads of a row


def consent_verdicts(
    session: Session, orders: Sequence[Order], rules: ReviewRules, rt: Runtime
) -> tuple[dict[int, str], set[int]]:
    """(order id → why its customer may not be asked, the orders asked as a transactional
    follow-up). With marketing consent a customer is asked as marketing; without it, only
    where `reviews.consent` allows a follow-up, and never at an address that opted out."""
    blocked: dict[int, str] = {}
    follow_up: list[Order] = []
    for order in orders:
        if order.customer is not None and order.customer.accepts_marketing:
            continue
        country = (order.shipping_address or {}).get("country_code")
        basis, region = rules.consent.rule_for(country)
        if basis == "required":
            where = "by default" if region == "default" else f"in {region}"
            blocked[order.id] = f"{NO_CONSENT} (required {where})"
        else:
            follow_up.append(order)
    blocked |= opted_out(session, follow_up, rt)
    return blocked, {o.id for o in follow_up} - set(blocked)


def opted_out(session: Session, orders: Sequence[Order], rt: Runtime) -> dict[int, str]:
    """order id → why its address may not get a transactional review request: suppressed
    (unsubscribe, bounce, complaint, erasure) or the reviews topic turned off; the governor's
    reasons, in two queries for the batch."""
    addresses = {o.id: o.email for o in orders if o.email}
    if not addresses:
        return {}
    suppressed = load_suppressions(session, [_Address(a) for a in addresses.values()],
                                   rt.settings.secret_key)
    topic = topics_by_template(rt.config.pages.topics).get(TEMPLATE)
    off = load_topics_off(session, addresses.values()) if topic else {}
    reasons = {}
    for order_id, address in addresses.items():
        key = email_hash(address)
        if key in suppressed:
            reasons[order_id] = f"suppressed: {suppressed[key]}"
        elif topic in off.get(key, ()):
            reasons[order_id] = f"preference: {topic} off"
    return reasons


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
    session: Session, orders: Sequence[Order], now: datetime, rules: ReviewRules,
    blocked: Mapping[int, str] | None = None,
) -> tuple[list[tuple[Order, OrderLine]], list[tuple[Order, OrderLine, str]]]:
    """Which (order, line) to ask about and which to skip with a reason, customer by customer;
    `blocked`: orders whose customer may not be asked (no consent), with the reason. A request
    not sent for consent does not count toward the limits."""
    blocked = blocked or {}
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
            why = (RETURNED if line.sku in returned.get(order.id, ())
                   else blocked.get(order.id)
                   or _skip_reason(order.customer_id, line.sku, asked, recent, rules))
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
        return f"already asked about this product within {rules.product_repeat_days} days"
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
    order: Order, line: OrderLine, products: Mapping[str, Product], rt: Runtime, now: datetime,
    follow_up: bool = False,
) -> dict[str, Any]:
    """The same request for everyone: the product (not the variant: `title` is what the subject
    names, `variant` what the line bought), and a link to write the review. `follow_up`: sent
    as transactional mail (no marketing consent, where the merchant allows it)."""
    sku = line.sku or ""
    product = products.get(sku)
    catalog_title = product.title if product else None
    name = product_title(line, catalog_title)
    context = base_context(order, rt.config)
    context["product"] = {
        "sku": sku, "title": name, "variant": variant_of(line, catalog_title),
        "review_url": review_url(order, line, product, name, rt, now),
    }
    key = order_key(rt.config, order, STEP, sku, TEMPLATE)  # one request per SKU
    basis = {"msg_class": FOLLOW_UP} if follow_up else {}
    return order_mail(rt.config, order, STEP, TEMPLATE, context, now, key=key, topic=sku,
                      **basis)


def review_request_counts(session: Session) -> dict[str, int]:
    """Review requests by outcome for `journeys report`: sent (with marketing consent, or as a
    transactional follow-up), waiting, and not sent by reason (no consent and where, a limit,
    returned, suppressed, expired ...)."""
    query = (select(Message.status, Message.msg_class, Message.reason, func.count())
             .where(Message.template == TEMPLATE)
             .group_by(Message.status, Message.msg_class, Message.reason))
    counts: Counter[str] = Counter()
    for status, msg_class, reason, n in session.execute(query):
        counts[outcome(status, msg_class, reason)] += n
    return dict(sorted(counts.items()))


def outcome(status: str, msg_class: str, reason: str | None) -> str:
    """A request's outcome as the report counts it. Skip reasons are short and fixed; other
    final reasons (expiry times, transport errors) are counted by status alone."""
    if status in SENT_STATUSES:
        return "sent" if msg_class != FOLLOW_UP else "sent as a transactional follow-up"
    if status in WAITING_STATUSES:
        return "waiting"
    return f"not sent: {reason}" if status == SKIPPED and reason else f"not sent: {status}"


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
