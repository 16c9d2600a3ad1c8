"""Value-add follow-ups after delivery (marketing): care guide, cross-sell, replenishment and
the yearly birthday offer.

The product rules live here (which guide, which picks, when a consumable runs out, whose
birthday it is); consent, suppression, frequency caps and quiet hours are applied by the
governor at send time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import chain, zip_longest
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import extract, select
from sqlalchemy.orm import Session

from tasks.aftercare import aftercare_config, close_missing
from tasks.aftercare.subscription import offer_context as subscription_offer
from tasks.config import Config
from tasks.config.aftercare import AftercareConfig, CareGuide
from tasks.journey import StageResult
from tasks.messaging.compose import base_context, mail_row, order_key, order_mail, store_context
from tasks.messaging.outbox import enqueue
from tasks.runtime import Runtime
from tasks.states import OrderState
from tasks.store.journal import finish_steps, reschedule_steps
from tasks.store.loaders import delivered_orders, products_of, products_ordered_by
from tasks.store.models import Customer, Message, Order, OrderLine, Product, ServiceCase
from tasks.store.returns import returned_skus
from tasks.storefront.reviews import product_name
from tasks.storefront.words import customer_locale

CARE, CROSS, REPLENISH, BIRTHDAY = "care_guide", "cross_sell", "replenishment", "birthday"
# Product attribute set when the source deleted the product (tasks/lifecycle.py): never offered.
DELETED_AT = "deleted_at"
# A catalog names a variant "<product> - <variant>" (Shopify intake; CSV catalogues by habit).
VARIANT_SEPARATOR = " - "
SHOPIFY_PRODUCT_ID = "shopify_product_id"  # Product.attributes key intake stores


# ---------------------------------------------------------------- shared lookups


def on_sale(product: Product) -> bool:
    """Still sold: not deleted at the source (its rows stay, order lines refer to them)."""
    return not (product.attributes or {}).get(DELETED_AT)


def sent_topics(
    session: Session, template: str, orders: Sequence[Order]
) -> set[tuple[int, str | None]]:
    """(customer, topic) pairs this template already went to through other orders."""
    customers = {o.customer_id for o in orders}
    if not customers:
        return set()
    query = select(Message.customer_id, Message.topic).where(
        Message.template == template, Message.customer_id.in_(customers),
        Message.order_id.not_in([o.id for o in orders]),
    )
    return {(c, t) for c, t in session.execute(query)}


def per_key(cfg: Config, order: Order, step: str, topic: str) -> str:
    """One message per order and topic (a category, a SKU); the step is the template."""
    return order_key(cfg, order, step, topic, step)


def gone_skus(session: Session, orders: Sequence[Order]) -> dict[int, set[str]]:
    """order id → SKUs the customer no longer has: every unit sent back in a return
    (tasks/store/returns.py) or refunded. Nothing is offered or reminded on top of them."""
    gone: dict[int, set[str]] = defaultdict(set)
    for order_id, skus in returned_skus(session, [o.id for o in orders]).items():
        gone[order_id] |= skus
    for order in orders:
        kept: Counter[str] = Counter()
        for line in order.lines:
            if line.sku:
                kept[line.sku] += line.kept_quantity
        gone[order.id] |= {sku for sku, units in kept.items() if units == 0}
    return gone


def product_url(cfg: Config, product: Product | None, sku: str) -> str:
    """The product on the store's own site (our edge serves no product pages): its handle
    when the catalog gave one, else its SKU."""
    handle = (product.attributes or {}).get("handle") if product is not None else None
    name = handle if isinstance(handle, str) and handle else sku
    return f"{cfg.store.website.rstrip('/')}/products/{quote(name, safe='')}"


def product_context(product: Product | None, line: OrderLine, cfg: Config) -> dict[str, Any]:
    """The product a follow-up is about: `title` is the product's (subjects and headlines),
    `variant` what the line item bought of it ("32"), for a body that names it."""
    sku, catalog_title = line.sku or "", product.title if product else None
    return {"sku": sku, "title": product_title(line, catalog_title),
            "variant": variant_of(line, catalog_title), "url": product_url(cfg, product, sku)}


# ---------------------------------------------------------------- product, not variant


def product_title(line: OrderLine, catalog_title: str | None) -> str:
    """The product without its variant ("Full-Grain Leather Belt", not "... - 32"): what a
    subject, a headline or a review names. The line's variant comes off the catalog's title;
    a line without one that the catalog's title extends ("Belt" → "Belt - 32") names it."""
    extends = catalog_title and catalog_title.startswith(line.title + VARIANT_SEPARATOR)
    if not line.variant_title and extends:
        return line.title
    return product_name(line, catalog_title)


def variant_of(line: OrderLine, catalog_title: str | None) -> str | None:
    """The variant a line item shows beside its product ("32"), None for a single product."""
    if line.variant_title:
        return line.variant_title
    title, name = catalog_title or line.title, product_title(line, catalog_title)
    return title.removeprefix(name + VARIANT_SEPARATOR) if title != name else None


def product_family(product: Product) -> str:
    """What makes catalog entries variants of one product: Shopify's product id, else the
    catalog's handle, else the title before " - " ("Trail Runner - 10" and "- 11")."""
    attributes = product.attributes or {}
    for key in (SHOPIFY_PRODUCT_ID, "handle"):
        if attributes.get(key):
            return f"{key}:{attributes[key]}"
    return "title:" + product.title.partition(VARIANT_SEPARATOR)[0].strip().lower()


def family_title(titles: Sequence[str]) -> str:
    """The name a product's variants share: the " - " parts common to all their titles. One
    title alone is kept whole (nothing tells its variant from a name like "Tee - Organic")."""
    common: list[str] = []
    for parts in zip(*(title.split(VARIANT_SEPARATOR) for title in titles), strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return VARIANT_SEPARATOR.join(common) if common and len(set(titles)) > 1 else titles[0]


def _finish(
    session: Session, step: str, order_ids: Sequence[int], orders: Sequence[Order],
    reasons: dict[int, str | None], now: datetime,
) -> int:
    """Mark the step done for the orders handled (with a reason if nothing was sent)."""
    finish_steps(session, step, {o.id: reasons.get(o.id) for o in orders}, now)
    return close_missing(session, step, order_ids, [o.id for o in orders], now)


# ---------------------------------------------------------------- care guide


def guide_for(
    product: Product | None, cfg: AftercareConfig
) -> tuple[str, CareGuide] | None:
    """(topic, guide): the product's own care_guide attribute, else its category's guide.

    The attribute may name another guide in the config (text) or override fields (object).
    """
    attributes = (product.attributes or {}) if product else {}
    override = attributes.get("care_guide")
    category = product.category if product else None
    if isinstance(override, str) and override in cfg.care_guides:
        return override, cfg.care_guides[override]
    if isinstance(override, dict) and product is not None:
        base = cfg.care_guides.get(category or "")
        fields = {**(base.model_dump() if base else {}), **override}
        if {"title", "body"} <= set(fields):
            return f"sku:{product.sku}", CareGuide.model_validate(fields)
    if category in cfg.care_guides:
        return category, cfg.care_guides[category]  # type: ignore[return-value]
    return None


def care_guide(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
) -> StageResult:
    """One care guide per product category of the order, not repeated to the same customer."""
    cfg = aftercare_config(rt.config)
    orders = delivered_orders(session, order_ids)
    products, seen = products_of(session, orders), sent_topics(session, CARE, orders)
    rows, reasons = [], {}
    for order in orders:
        order_rows = care_messages(order, products, seen, cfg, rt.config, now)
        rows += order_rows
        reasons[order.id] = None if order_rows else "no new care guide for these products"
    enqueue(session, rows, now)
    closed = _finish(session, CARE, order_ids, orders, reasons, now)
    return StageResult(stage=CARE, advanced=len(orders), closed=closed,
                       details={"messages_enqueued": len(rows)})


def care_messages(
    order: Order, products: dict[str, Product], seen: set[tuple[int, str | None]],
    cfg: AftercareConfig, config: Config, now: datetime,
) -> list[dict[str, Any]]:
    rows = []
    for line in order.lines:
        product = products.get(line.sku or "")
        found = guide_for(product, cfg)
        if found is None or (order.customer_id, found[0]) in seen:
            continue
        topic, guide = found
        seen.add((order.customer_id, topic))
        context = base_context(order, config)
        context["product"] = product_context(product, line, config)
        context["guide"] = guide.model_dump()
        rows.append(order_mail(config, order, CARE, CARE, context, now,
                               key=per_key(config, order, CARE, topic), topic=topic))
    return rows


# ---------------------------------------------------------------- cross-sell


def cross_sell(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
) -> StageResult:
    """Suggest in-stock products from related categories: one entry per product, none the
    customer already has in any size or colour (from any of their orders)."""
    cfg = aftercare_config(rt.config)
    orders = delivered_orders(session, order_ids)
    refunded = refunded_orders(session, [o.id for o in orders])
    products, gone = products_of(session, orders), gone_skus(session, orders)
    anchors = {o.id: a for o in orders if o.id not in refunded
               if (a := anchor_line(o, products, cfg, gone[o.id])) is not None}
    categories = {c for _, p in anchors.values() for c in cfg.cross_sell.affinity[p.category]}
    catalog = catalog_by_category(session, categories)
    owned = owned_families(session, {o.customer_id for o in orders})
    rows, reasons = [], {oid: "order refunded" for oid in refunded}
    for order in orders:
        if order.id in refunded:
            continue
        row = cross_sell_message(order, anchors.get(order.id), catalog, owned, cfg, rt.config,
                                 now)
        rows += [row] if row else []
        reasons[order.id] = None if row else (
            "items returned" if gone[order.id] and order.id not in anchors
            else "no suitable products to suggest")
    enqueue(session, rows, now)
    closed = _finish(session, CROSS, order_ids, orders, reasons, now)
    return StageResult(stage=CROSS, advanced=len(orders), closed=closed,
                       details={"messages_enqueued": len(rows)})


@dataclass(frozen=True)
class CatalogProduct:
    """A product as the catalog sells it: its variants on sale (a belt in 32, 34 and 36)."""

    family: str
    title: str  # without the variant
    variants: tuple[Product, ...]

    def offer(self) -> Product | None:
        """The variant an offer shows and links: the lowest-priced in stock, None if none is."""
        in_stock = [p for p in self.variants if (p.stock or 0) - (p.reserved or 0) > 0]
        return min(in_stock, key=lambda p: (p.price is None, p.price or 0, p.sku), default=None)


def catalog_by_category(
    session: Session, categories: Iterable[str]
) -> dict[str, list[CatalogProduct]]:
    """Products on sale per category, in SKU order, each with all its variants (those out of
    stock too: they tell the product's name apart from a variant's)."""
    categories = set(categories)
    if not categories:
        return {}
    query = select(Product).where(Product.category.in_(categories)).order_by(Product.sku)
    variants: dict[tuple[str, str], list[Product]] = defaultdict(list)
    for product in filter(on_sale, session.scalars(query)):
        variants[(product.category, product_family(product))].append(product)  # type: ignore[index]
    found: dict[str, list[CatalogProduct]] = defaultdict(list)
    for (category, family), members in variants.items():
        title = family_title([p.title for p in members])
        found[category].append(CatalogProduct(family, title, tuple(members)))
    return found


def owned_families(session: Session, customer_ids: set[int]) -> dict[int, set[str]]:
    """customer id → the products (families) they ordered in any order, whatever the variant."""
    return {customer_id: {product_family(p) for p in products}
            for customer_id, products in products_ordered_by(session, customer_ids).items()}


def choose_offers(
    categories: Sequence[str], catalog: dict[str, list[CatalogProduct]], owned: set[str],
    limit: int,
) -> list[tuple[CatalogProduct, Product]]:
    """Up to `limit` (product, the variant to show), taking from each related category in
    turn: in stock, one entry per product, never a product the customer has."""
    columns = [[(p, v) for p in catalog.get(c, []) if p.family not in owned
                if (v := p.offer()) is not None] for c in categories]
    offers, seen = [], set()
    for entry in chain.from_iterable(zip_longest(*columns)):
        if entry is not None and entry[0].family not in seen:
            seen.add(entry[0].family)
            offers.append(entry)
    return offers[:limit]


def refunded_orders(session: Session, order_ids: Sequence[int]) -> set[int]:
    """Orders a service case refunded (returned): no selling on top of them."""
    if not order_ids:
        return set()
    query = select(ServiceCase.order_id).where(
        ServiceCase.order_id.in_(order_ids), ServiceCase.decision == "refund"
    )
    return set(session.scalars(query))


def anchor_line(
    order: Order, products: dict[str, Product], cfg: AftercareConfig,
    gone: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[OrderLine, Product] | None:
    """The order's most valuable line whose category has affinities, of a product the
    customer still has (not returned or refunded)."""
    lines = [(line, products[line.sku]) for line in order.lines
             if line.sku in products and line.sku not in gone
             and products[line.sku].category in cfg.cross_sell.affinity]
    return max(lines, key=lambda lp: (lp[0].unit_price, lp[1].sku), default=None)


def cross_sell_message(
    order: Order, anchor: tuple[OrderLine, Product] | None,
    catalog: dict[str, list[CatalogProduct]], owned: dict[int, set[str]],
    cfg: AftercareConfig, config: Config, now: datetime,
) -> dict[str, Any] | None:
    if anchor is None:
        return None
    line, product = anchor
    related = cfg.cross_sell.affinity[product.category]  # type: ignore[index]
    offers = choose_offers(related, catalog, owned.get(order.customer_id, set()),
                           cfg.cross_sell.max_items)
    if not offers:
        return None
    context = base_context(order, config)
    context["product"] = product_context(product, line, config)
    context["picks"] = [{"sku": v.sku, "title": p.title, "category": v.category,
                         "price": str(v.price) if v.price is not None else None,
                         "url": product_url(config, v, v.sku)} for p, v in offers]
    return order_mail(config, order, CROSS, CROSS, context, now, topic=product.category)


# ---------------------------------------------------------------- replenishment


def consumable_days(product: Product | None) -> int | None:
    if product is None or not on_sale(product):
        return None  # no reminder to buy again what is no longer sold
    value = (product.attributes or {}).get("consumable_days")
    try:
        days = int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return days if days and days > 0 else None


def replenishment_due(
    delivered_at: datetime, days: int, quantity: int, lead_days: int
) -> datetime:
    """When a consumable is about to run out: delivery + days × quantity − lead days."""
    return delivered_at + timedelta(days=days * quantity - lead_days)


def replenishment(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
) -> StageResult:
    """Remind when a consumable runs low; not yet due → the step is due again at that time."""
    cfg = aftercare_config(rt.config)
    orders = delivered_orders(session, order_ids)
    products, gone = products_of(session, orders), gone_skus(session, orders)
    reordered = reordered_skus(session, orders)
    rows, later, reasons = [], {}, {}
    for order in orders:
        due = consumable_lines(order, products, cfg, reordered, gone[order.id])
        for line, _ in (d for d in due if d[1] <= now):
            rows.append(replenish_message(order, line, products, rt, now))
        upcoming = [when for _, when in due if when > now]
        if upcoming:
            later[order.id] = min(upcoming)
        elif not due:
            returned = any(consumable_days(products.get(sku)) for sku in gone[order.id])
            reasons[order.id] = ("consumable returned" if returned
                                 else "no consumables to replenish")
    enqueue(session, rows, now)
    reschedule_steps(session, REPLENISH, later, "waiting until a consumable runs low", now)
    done = [o for o in orders if o.id not in later]
    finish_steps(session, REPLENISH, {o.id: reasons.get(o.id) for o in done}, now)
    closed = close_missing(session, REPLENISH, order_ids, [o.id for o in orders], now)
    return StageResult(stage=REPLENISH, advanced=len(done), held=len(later), closed=closed,
                       details={"messages_enqueued": len(rows)})


def consumable_lines(
    order: Order, products: dict[str, Product], cfg: AftercareConfig,
    reordered: set[tuple[int, str]], gone: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[tuple[OrderLine, datetime]]:
    """(line, due) for the order's consumables the customer kept (not returned or refunded)
    and has not re-ordered since; the units kept set when they run out."""
    due = []
    for line in order.lines:
        days = consumable_days(products.get(line.sku or ""))
        if days is None or (order.id, line.sku) in reordered or line.sku in gone:
            continue
        when = replenishment_due(order.delivered_at, days,  # type: ignore[arg-type]
                                 line.kept_quantity or line.quantity,
                                 cfg.replenishment.lead_days)
        due.append((line, when))
    return due


def reordered_skus(session: Session, orders: Sequence[Order]) -> set[tuple[int, str]]:
    """(order, sku) where the same customer ordered that SKU again after this order."""
    if not orders:
        return set()
    query = (
        select(Order.id, Order.customer_id, Order.placed_at, OrderLine.sku)
        .join(OrderLine, OrderLine.order_id == Order.id)
        .where(Order.customer_id.in_({o.customer_id for o in orders}),
               OrderLine.sku.is_not(None), Order.state != OrderState.CANCELLED)
    )
    later: dict[tuple[int, str], list[tuple[int, datetime]]] = defaultdict(list)
    for order_id, customer_id, placed_at, sku in session.execute(query):
        later[(customer_id, sku)].append((order_id, placed_at))
    return {
        (o.id, line.sku) for o in orders for line in o.lines if line.sku
        if any(oid != o.id and at > o.placed_at for oid, at in later[(o.customer_id, line.sku)])
    }


def replenish_message(
    order: Order, line: OrderLine, products: dict[str, Product], rt: Runtime, now: datetime
) -> dict[str, Any]:
    """The reminder; with the store's "deliver every N weeks" offer when it has one."""
    sku, cfg = line.sku or "", rt.config
    context = base_context(order, cfg)
    context["product"] = product_context(products.get(sku), line, cfg)
    context["subscription"] = subscription_offer(order, line, products.get(sku), cfg,
                                                 rt.settings.secret_key, now)
    return order_mail(cfg, order, REPLENISH, REPLENISH, context, now,
                      key=per_key(cfg, order, REPLENISH, sku), topic=sku)


# ---------------------------------------------------------------- birthday


def birthday_in(year: int, birthday: date) -> date:
    """The birthday's date in `year` (29 February is celebrated on the 28th otherwise)."""
    try:
        return birthday.replace(year=year)
    except ValueError:
        return date(year, 2, 28)


def customer_zone(customer: Customer, fallback: str) -> ZoneInfo:
    try:
        return ZoneInfo(customer.timezone or fallback)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, e.g. 'America'
        return ZoneInfo(fallback)


def birthday_key(customer_id: int, year: int) -> str:
    return f"customer:{customer_id}:birthday:{year}"


def birthday_offers(session: Session, now: datetime, rt: Runtime) -> StageResult:
    """Birthday offers for customers whose birthday is today where they live, once a year."""
    cfg = aftercare_config(rt.config).birthday
    candidates = birthday_candidates(session, now)
    rows, too_late = [], 0
    for customer in candidates:
        today = now.astimezone(customer_zone(customer, rt.config.store.timezone)).date()
        birthday = birthday_in(today.year, customer.birthday)  # type: ignore[arg-type]
        if birthday != today:
            continue
        if told_too_late(customer, birthday, cfg.min_capture_days, rt.config.store.timezone):
            too_late += 1
            continue
        rows.append(birthday_message(customer, today, rt, now))
    known = existing_keys(session, [row["effect_key"] for row in rows])
    enqueue(session, rows, now)
    return StageResult(stage=BIRTHDAY, received=len(candidates),
                       advanced=len(rows) - len(known), skipped=too_late + len(known),
                       details={"messages_enqueued": len(rows) - len(known),
                                "captured_too_late": too_late})


def birthday_candidates(session: Session, now: datetime) -> list[Customer]:
    """Customers whose birthday month is this month anywhere on Earth (refined per zone)."""
    days = [(now + timedelta(days=d)).date() for d in (-1, 0, 1)]
    months = sorted({day.month for day in days})
    query = select(Customer).where(
        Customer.birthday.is_not(None), extract("month", Customer.birthday).in_(months)
    ).order_by(Customer.id)
    return list(session.scalars(query))


def told_too_late(customer: Customer, birthday: date, min_days: int, fallback_tz: str) -> bool:
    """A birthday given less than `min_days` before it gets no offer (abuse guard)."""
    if customer.birthday_captured_at is None:
        return False
    zone = customer_zone(customer, fallback_tz)
    captured = customer.birthday_captured_at.astimezone(zone).date()
    return (birthday - captured).days < min_days


def birthday_code(secret_key: str, customer_id: int, year: int, prefix: str) -> str:
    """Deterministic per customer and year, unguessable without the secret."""
    digest = hmac.new(secret_key.encode(), f"birthday:{customer_id}:{year}".encode(),
                      hashlib.sha256).digest()
    return f"{prefix}-{base64.b32encode(digest).decode()[:10]}"


def birthday_message(
    customer: Customer, today: date, rt: Runtime, now: datetime
) -> dict[str, Any]:
    """A customer-level outbox row (no order): keyed customer:{id}:birthday:{year}."""
    config, rules = rt.config, aftercare_config(rt.config).birthday
    first, last = customer.first_name, customer.last_name
    locale = customer_locale(customer, config)  # one we have words for: dates match them
    context = {
        "store": {**store_context(config), "links_base_url": config.store.links_base_url},
        "customer": {"first_name": first, "name": " ".join(p for p in (first, last) if p)},
        "locale": locale,
        "offer": {
            "code": birthday_code(rt.settings.secret_key, customer.id, today.year,
                                  rules.code_prefix),
            "percent_off": rules.percent_off,
            "valid_until": (today + timedelta(days=rules.valid_days)).isoformat(),
            "locale": locale,
        },
    }
    return mail_row(config, BIRTHDAY, context, now, key=birthday_key(customer.id, today.year),
                    order_id=None, customer_id=customer.id, to_addr=customer.email,
                    topic=BIRTHDAY)


def existing_keys(session: Session, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    return set(session.scalars(select(Message.effect_key).where(Message.effect_key.in_(keys))))
