"""Subscribe to reorder: the replenishment mail's optional "deliver every N weeks" offer.

When the store configures its subscription product (`replenishment.subscription_url`, a URL
template with {sku} and {weeks}), the reminder links our /s/{token} page: an order-page token
(Purpose.ORDER) whose `extra` is the order line. That page's GET only shows one button (mail
scanners fetch links); its POST records the click once per order and SKU (timeline event
`subscription_click`) and sends the customer on to the store. journeys runs no billing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.config import Config
from tasks.links import Purpose, link_url
from tasks.store.journal import record_events
from tasks.store.models import Order, OrderEvent, OrderLine, Product

CLICK = "subscription_click"
PATH = "s"  # /s/{token}: an ORDER token with the order line as its extra


@dataclass(frozen=True)
class Offer:
    sku: str
    title: str
    weeks: int
    store_url: str  # where the customer subscribes: the store's own product


def weeks_for(product: Product | None, cfg: Config) -> int | None:
    """Every N weeks: the configured number, else the product's consumable_days in weeks."""
    rules = cfg.aftercare.replenishment
    if rules.subscription_url is None:
        return None
    if rules.subscription_weeks:
        return rules.subscription_weeks
    days = (product.attributes or {}).get("consumable_days") if product is not None else None
    try:
        return max(1, round(int(days) / 7)) if days else None
    except (TypeError, ValueError):
        return None


def offer_for(line: OrderLine, product: Product | None, cfg: Config) -> Offer | None:
    """The subscription offer for a line, or None (not configured, no SKU, no cycle)."""
    weeks = weeks_for(product, cfg)
    template = cfg.aftercare.replenishment.subscription_url
    if weeks is None or template is None or not line.sku:
        return None
    url = template.format(sku=quote(line.sku, safe=""), weeks=weeks)
    return Offer(line.sku, product.title if product else line.title, weeks, url)


def offer_context(order: Order, line: OrderLine, product: Product | None, cfg: Config,
                  secret_key: str, now: datetime) -> dict[str, Any] | None:
    """What the reminder shows: every N weeks, and our /s/ link (issued on the stage's day,
    so a re-rendered mail has the same link)."""
    offer = offer_for(line, product, cfg)
    if offer is None:
        return None
    link = link_url(cfg.store.links_base_url, secret_key, Purpose.ORDER, order.id, now,
                    extra=line.id)
    return {"weeks": offer.weeks, "url": link.replace("/o/", f"/{PATH}/", 1)}


def line_offer(session: Session, order_id: int, line_id: int, cfg: Config
               ) -> Offer | None:
    """The offer a /s/ link names (its order line, on the current config), or None."""
    line = session.scalars(select(OrderLine).where(
        OrderLine.id == line_id, OrderLine.order_id == order_id)).one_or_none()
    if line is None or not line.sku:
        return None
    product = session.scalars(select(Product).where(Product.sku == line.sku)).one_or_none()
    return offer_for(line, product, cfg)


def record_click(session: Session, order_id: int, offer: Offer, now: datetime) -> bool:
    """One `subscription_click` timeline event per order and SKU; False if already there.
    The order row is locked first, so two POSTs at once record it once."""
    session.execute(select(Order.id).where(Order.id == order_id).with_for_update())
    kinds = session.scalars(select(OrderEvent.detail).where(
        OrderEvent.order_id == order_id, OrderEvent.kind == CLICK))
    if any((detail or {}).get("sku") == offer.sku for detail in kinds):
        return False
    record_events(session, [{"order_id": order_id, "at": now, "kind": CLICK,
                             "from_state": None, "to_state": None, "actor": "customer",
                             "detail": {"sku": offer.sku, "weeks": offer.weeks}}])
    return True
