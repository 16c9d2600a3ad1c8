"""What the order page (/o/{token}) shows: items, a timeline, parcels, promises, suggestions.

Everything is read from the order's rows in a few queries and turned into plain values for
configs/templates/pages/order.html. Nothing here writes, and nothing reads a clock: `now` is
passed in. Wording is plain words for customers, in the order's language (marked with N_ and
translated here); the store's internal reasons (hold codes, carrier subtags) never reach the
page as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_time
from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.aftercare import aftercare_config
from tasks.aftercare.followups import (
    catalog_by_category,
    choose_offers,
    owned_families,
    product_url,
)
from tasks.config import Config
from tasks.i18n import N_
from tasks.links import Purpose, link_url
from tasks.markdown import mask_words
from tasks.messaging.compose import locale_of
from tasks.messaging.money import address_lines, format_day, resolve_locale
from tasks.returns.notices import status_label
from tasks.returns.policy import returnable_lines
from tasks.store.journal import CANCELLED, CONFIRMED, ON_HOLD, PACKED
from tasks.store.loaders import products_by_sku
from tasks.store.models import Order, OrderLine, Product, Return, Shipment, TrackingEvent
from tasks.store.returns import returned_units
from tasks.storefront.words import Say, speaker
from tasks.tracking.ingest import DELIVERED, DELIVERED_TAG, SHIPPED
from tasks.tracking.stage import (
    exception_kind,
    new_estimate,
    promise_passed,
    shipments_by_order,
    tracking_config,
)

STEPS = (("confirmed", N_("Order confirmed")), ("packed", N_("Packed")),
         ("shipped", N_("Shipped")), ("out_for_delivery", N_("Out for delivery")),
         ("delivered", N_("Delivered")))
# How far along the timeline each order state is (index into STEPS).
REACHED = {PACKED: 1, CONFIRMED: 1, SHIPPED: 2, DELIVERED: 4}
OUT_FOR_DELIVERY = "OutForDelivery"
CHECKPOINTS_PER_PARCEL = 40  # a parcel's page stays short; the carrier's link has the rest

# AfterShip's tags in words a customer reads.
TAG_WORDS = {
    "Pending": N_("Waiting for the carrier"),
    "InfoReceived": N_("The carrier has the parcel's details"),
    "InTransit": N_("On its way"), OUT_FOR_DELIVERY: N_("Out for delivery"),
    "AttemptFail": N_("Delivery attempted"), DELIVERED_TAG: N_("Delivered"),
    "AvailableForPickup": N_("Ready for pickup"), "Exception": N_("Delivery problem"),
    "Expired": N_("No recent updates from the carrier"),
}
# What went wrong with a parcel (tracking.yaml exception_kinds), in plain words.
PROBLEM_WORDS = {
    "failed_attempt": N_("The carrier tried to deliver but could not. They usually try again; "
                         "you can also arrange a new delivery on the carrier's tracking page."),
    "pickup": N_("Waiting for you at a pickup point. Please collect it soon: carriers keep "
                 "parcels only for a limited time."),
    "address_problem": N_("The carrier could not deliver: address issue. Please write to us "
                          "with the correct address."),
    "refused": N_("The carrier could not deliver: the delivery was refused."),
    "customs_delay": N_("Delayed: the parcel is held in customs. It is still on its way."),
    "delayed": N_("Delayed on its way. It is still moving and we are following it."),
    "returned_to_sender": N_("The carrier is returning the parcel to us. We will be in touch "
                             "about a new delivery or a refund."),
    "damaged": N_("The carrier reports the parcel was damaged. We will replace it or refund "
                  "you."),
    "lost": N_("The carrier reports the parcel was lost. We will send a replacement or refund "
               "you."),
}
OTHER_PROBLEM = N_("The carrier reports a problem with the delivery. We are looking into it.")


def order_page(session: Session, order: Order, cfg: Config, secret_key: str,
               now: datetime) -> dict[str, Any]:
    """Everything order.html shows, read in one session (about seven queries)."""
    locale, zone = locale_of(order, cfg), ZoneInfo(cfg.store.timezone)
    say = speaker(cfg, locale)
    parcels = shipments_by_order(session, [order.id])[order.id]
    events = checkpoints(session, [p.id for p in parcels])
    catalog = products_by_sku(session, {line.sku for line in order.lines if line.sku})
    delivered = order.state == DELIVERED
    return {
        "order": {"name": order.name or f"#{order.external_id}", "locale": locale,
                  "placed_on": local_day(order.placed_at, zone), "state": order.state,
                  "delivered_on": local_day(order.delivered_at, zone) if delivered else None},
        "items": [item_view(line) for line in sorted(order.lines, key=lambda li: li.position)],
        "timeline": timeline(order, parcels, events, zone, say),
        "problems": problems(order, parcels, cfg, now, say),
        "promise": promise(order, parcels, cfg, now),
        "parcels": [parcel_view(p, events.get(p.id, []), say, zone) for p in parcels],
        "address": masked_address(order.shipping_address or {}, locale),
        "related": related_products(session, order, catalog, cfg),
        "survey_url": survey_url(order, cfg, secret_key, now),
        "return_policy": say(cfg.store.return_policy) if delivered else None,
        "returns": returns_section(session, order, catalog, cfg, secret_key, now, say),
    }


# ---------------------------------------------------------------- reads


def checkpoints(session: Session, shipment_ids: Sequence[int]) -> dict[int, list[TrackingEvent]]:
    """Each parcel's tracking events, newest first (stale ones too: they still happened)."""
    found: dict[int, list[TrackingEvent]] = {sid: [] for sid in shipment_ids}
    if shipment_ids:
        query = (select(TrackingEvent).where(TrackingEvent.shipment_id.in_(shipment_ids))
                 .order_by(TrackingEvent.occurred_at.desc(), TrackingEvent.id.desc()))
        for event in session.scalars(query):
            found[event.shipment_id].append(event)
    return found


# ---------------------------------------------------------------- what is shown


def local_day(at: datetime | None, zone: ZoneInfo) -> date | None:
    return at.astimezone(zone).date() if at is not None else None


def item_view(line: OrderLine) -> dict[str, Any]:
    """A line; `kept` only when units were refunded (what the customer actually keeps)."""
    refunded = (line.refunded_quantity or 0) > 0
    return {"title": line.title, "variant": line.variant_title, "quantity": line.quantity,
            "kept": line.kept_quantity if refunded else None}


def timeline(order: Order, parcels: list[Shipment], events: dict[int, list[TrackingEvent]],
             zone: ZoneInfo, say: Say) -> list[dict[str, Any]]:
    """confirmed → packed → shipped → out for delivery → delivered, each done, current or to
    come; a cancelled order stops after the first step."""
    reached = REACHED.get(order.state, 0)
    out_at = first_out_for_delivery(events)
    if order.state == SHIPPED and (out_at or any(p.status == OUT_FOR_DELIVERY for p in parcels)):
        reached = 3
    days = {"confirmed": local_day(order.placed_at, zone),
            "shipped": local_day(order.shipped_at, zone) if reached >= 2 else None,
            "out_for_delivery": local_day(out_at, zone) if reached >= 3 else None,
            "delivered": local_day(order.delivered_at, zone) if reached >= 4 else None}
    steps = []
    for index, (key, label) in enumerate(STEPS):
        status = "done" if index <= reached else "current" if index == reached + 1 else "todo"
        steps.append({"key": key, "label": say(label), "status": status, "on": days.get(key)})
    if order.state == CANCELLED:
        return steps[:1]
    return steps


def first_out_for_delivery(events: dict[int, list[TrackingEvent]]) -> datetime | None:
    times = [e.occurred_at for found in events.values() for e in found
             if e.tag == OUT_FOR_DELIVERY]
    return min(times, default=None)


def problems(order: Order, parcels: list[Shipment], cfg: Config, now: datetime,
             say: Say) -> list[dict[str, Any]]:
    """What is not going to plan, each {kind, text, ...} for the timeline and a notice."""
    zone = ZoneInfo(cfg.store.timezone)
    if order.state == CANCELLED:
        return [{"kind": "cancelled", "on": local_day(order.cancelled_at, zone),
                 "text": say(N_("This order was cancelled. If you paid, the refund goes back "
                                "to how you paid."))}]
    if order.state == ON_HOLD:  # the hold's reason is ours (codes), never shown
        return [{"kind": "on_hold", "text": say(N_(
            "On hold: we are checking a detail of your order before we pack it. We will write "
            "to you if we need anything."))}]
    found = []
    settings = tracking_config(cfg)
    for parcel in parcels:
        kind = exception_kind(parcel, settings)
        if kind is not None and order.state != DELIVERED:
            found.append({"kind": "parcel", "parcel": parcel_name(parcel, say),
                          "text": say(PROBLEM_WORDS.get(kind, OTHER_PROBLEM))})
    if is_late(order, cfg, now):
        found.append({"kind": "late", "text": say(N_(
            "Running late: it has not arrived on the day we promised. We are sorry."))})
    return found


def is_late(order: Order, cfg: Config, now: datetime) -> bool:
    return order.state not in (DELIVERED, CANCELLED) and promise_passed(
        order, now, cfg.store.timezone)


def promise(order: Order, parcels: list[Shipment], cfg: Config,
            now: datetime) -> dict[str, date | None]:
    """The day we promised and, while it is under way, any revised estimate: the delay
    apology's when the promise has passed, else the carriers' latest (edd_revise)."""
    if order.state in (DELIVERED, CANCELLED):
        return {"promised": order.promised_delivery, "revised": None}
    if is_late(order, cfg, now):
        revised = new_estimate(order, parcels, now, tracking_config(cfg), cfg.store.timezone)
    else:
        known = [p.expected_delivery for p in parcels
                 if p.status != DELIVERED_TAG and p.expected_delivery is not None]
        revised = max(known, default=None)
    return {"promised": order.promised_delivery,
            "revised": revised if revised != order.promised_delivery else None}


def parcel_name(parcel: Shipment, say: Say) -> str:
    carrier = (parcel.carrier or "").upper()
    return " ".join(part for part in (carrier, parcel.tracking_number) if part) or say(
        N_("Parcel"))


def tag_words(tag: str | None, say: Say) -> str | None:
    """A carrier's status tag in the customer's words; an unknown one as the carrier sent it."""
    return say(TAG_WORDS[tag]) if tag in TAG_WORDS else tag


def parcel_view(parcel: Shipment, events: list[TrackingEvent], say: Say,
                zone: ZoneInfo) -> dict[str, Any]:
    """One parcel: carrier, number, the carrier's own link (http(s) only), checkpoints."""
    url = parcel.tracking_url if (parcel.tracking_url or "").startswith(("https://",
                                                                          "http://")) else None
    return {"carrier": (parcel.carrier or "").upper() or None,
            "tracking_number": parcel.tracking_number, "carrier_url": url,
            "status": tag_words(parcel.status, say),
            "expected": parcel.expected_delivery,
            "checkpoints": [checkpoint_view(e, say, zone)
                            for e in events[:CHECKPOINTS_PER_PARCEL]]}


def checkpoint_view(event: TrackingEvent, say: Say, zone: ZoneInfo) -> dict[str, Any]:
    local, locale = event.occurred_at.astimezone(zone), say.locale
    when = f"{format_day(local.date(), locale)}, " \
           f"{format_time(local, 'short', locale=resolve_locale(locale))}"
    return {"text": event.message or tag_words(event.tag, say),
            "place": event.location, "when": when,
            "iso": local.isoformat(timespec="minutes")}


# ---------------------------------------------------------------- the address, partly hidden


def masked_address(address: dict[str, Any], locale: str) -> list[str]:
    """City, region, postcode and country as they are; name and street hidden but
    recognisable to their owner ("A•• L•••••••", "4•• Alder St")."""
    hidden = {key: mask_words(str(address[key]), only_with_digits=False)
              for key in ("name", "first_name", "last_name", "company") if address.get(key)}
    hidden |= {key: mask_words(str(address[key]), only_with_digits=True)
               for key in ("address1", "address2") if address.get(key)}
    return address_lines({**address, **hidden}, locale)


# ---------------------------------------------------------------- links


def survey_url(order: Order, cfg: Config, secret_key: str, now: datetime) -> str | None:
    """The delivery survey (/f/), after delivery and while a link issued on the delivery day
    still opens it."""
    if order.state != DELIVERED or order.delivered_at is None:
        return None
    lifetime = cfg.pages.link_days.feedback
    if lifetime and (now - order.delivered_at).days > lifetime:
        return None
    return link_url("", secret_key, Purpose.FEEDBACK, order.id, order.delivered_at)


def returns_section(session: Session, order: Order, catalog: dict[str, Product], cfg: Config,
                    secret_key: str, now: datetime, say: Say) -> dict[str, Any]:
    """The order's returns (RMA, status in words) and the returns page's link when something
    can still be returned or a return is under way (tasks/returns/policy.py decides)."""
    rows = list(session.scalars(select(Return).where(Return.order_id == order.id)
                                .order_by(Return.id)))
    units = returned_units(session, [order.id]).get(order.id, {})
    can_start = cfg.returns.enabled and any(
        line.units for line in returnable_lines(order, catalog, units, now, cfg))
    url = link_url("", secret_key, Purpose.RETURNS, order.id, now) if can_start or rows else None
    return {"url": url, "can_start": can_start,
            "list": [{"rma": r.rma, "status": status_label(r.status, say)}
                     for r in rows]}


# ---------------------------------------------------------------- you might also like


def related_products(session: Session, order: Order, catalog: dict[str, Product],
                     cfg: Config) -> list[dict[str, Any]]:
    """Up to `pages.related_products` in-stock products from the categories related to the
    order's (cross-sell affinity): one entry per product under its name, never one the customer
    bought in any size or colour (the same choice as the cross-sell mail)."""
    limit = cfg.pages.related_products
    if limit <= 0 or order.state == CANCELLED:
        return []
    affinity = aftercare_config(cfg).cross_sell.affinity
    categories = list(dict.fromkeys(
        related for line in sorted(order.lines, key=lambda li: li.position)
        if line.sku in catalog for related in affinity.get(catalog[line.sku].category or "", [])))
    owned = owned_families(session, {order.customer_id}).get(order.customer_id, set())
    offers = choose_offers(categories, catalog_by_category(session, categories), owned, limit)
    return [{"title": product.title, "price": variant.price,
             "currency": cfg.store.default_currency, "url": product_url(cfg, variant, variant.sku)}
            for product, variant in offers]
