"""Composing mail: the context every e-mail shares and the one builder of outbox rows.

Stages decide *what* to tell a customer; this module turns that into the row `enqueue` stores
(tasks/messaging/outbox.py), so every mail is keyed, versioned and addressed the same way.
A row's context is a JSON snapshot of what the mail shows (a resend shows the same thing); its
Message-ID derives from its effect key (a resend is the same mail to the receiving server).

Effect keys: `order:{id}:{step}:{template}:v{version}` for an order's mail (`order_key`); a
mail sent once per topic of an order puts the topic in the template's place (one per SKU, per
category); customer-level mail (birthday, loyalty) is keyed by its caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Any

from tasks.config import Config
from tasks.i18n import available_languages, locales_dir
from tasks.messaging.money import order_locale
from tasks.messaging.outbox import effect_key_for, message_id_for
from tasks.store.models import Order, OrderLine

STORE_FIELDS = ("name", "legal_name", "email", "reply_to", "phone", "website", "postal_address")


# ---------------------------------------------------------------- context


def store_context(cfg: Config) -> dict[str, Any]:
    """Who the mail is from: the store's name and contact details."""
    return {name: getattr(cfg.store, name) for name in STORE_FIELDS}


def customer_context(order: Order) -> dict[str, Any]:
    """The customer's name as the order knows it (the shipping address fills in gaps)."""
    customer, address = order.customer, order.shipping_address or {}
    first = (customer.first_name if customer else None) or address.get("first_name")
    last = (customer.last_name if customer else None) or address.get("last_name")
    return {"first_name": first, "name": " ".join(p for p in (first, last) if p)}


def locale_of(order: Order, cfg: Config) -> str:
    """The order's locale, else its customer's, else the store's default: the first one whose
    language has a catalog (its dates and money then match its words)."""
    customer_locale = order.customer.locale if order.customer else None
    return order_locale(order.locale, customer_locale, cfg.store.default_locale,
                        available_languages(locales_dir(cfg.dir)))


def order_name(order: Order) -> str:
    """What the customer calls the order: the store's name for it (#1001), else its number."""
    return order.name or f"#{order.external_id}"


def line_context(line: OrderLine) -> dict[str, Any]:
    """One order line as a mail shows it (refunded units are not coming, so not counted)."""
    return {
        "title": line.title,
        "variant_title": line.variant_title,
        "sku": line.sku,
        "quantity": line.kept_quantity,
        "unit_price": str(line.unit_price),
        "line_total": str(line.unit_price * line.kept_quantity),
    }


def base_context(order: Order, cfg: Config) -> dict[str, Any]:
    """Store, customer and order basics every after-delivery or cancellation mail shows."""
    return {
        "store": {**store_context(cfg), "links_base_url": cfg.store.links_base_url},
        "customer": customer_context(order),
        "order": {"id": order.id, "name": order_name(order),
                  "currency": order.currency, "locale": locale_of(order, cfg)},
    }


# ---------------------------------------------------------------- the outbox row


@cache
def _domain_of(from_address: str) -> str:
    return from_address.rpartition("@")[2]


def mail_domain(cfg: Config) -> str:
    """The domain of our Message-IDs: the sender's (computed once per sender address)."""
    return _domain_of(cfg.messaging.from_address)


def template_version(cfg: Config, template: str) -> int:
    return cfg.messaging.templates[template].version


def order_key(cfg: Config, order: Order, step: str, template_or_topic: str,
              template: str | None = None) -> str:
    """`order:{id}:{step}:{template_or_topic}:v{version}`, the version being `template`'s
    (by default `template_or_topic` is the template)."""
    version = template_version(cfg, template or template_or_topic)
    return effect_key_for(order.id, step, template_or_topic, version)


def mail_row(
    cfg: Config, template: str, context: Mapping[str, Any], now: datetime, *,
    key: str, order_id: int | None, customer_id: int | None, to_addr: str | None,
    **columns: Any,
) -> dict[str, Any]:
    """THE outbox row for `enqueue`: the template's version, class and priority, a Message-ID
    derived from `key`, due now. `columns`: what some mails also set (topic)."""
    spec = cfg.messaging.templates[template]
    return {
        "effect_key": key, "order_id": order_id, "customer_id": customer_id,
        "template": template, "version": spec.version, "msg_class": spec.msg_class,
        "priority": spec.priority, "to_addr": to_addr,
        "message_id": message_id_for(key, mail_domain(cfg)),
        "context": dict(context), "not_before": now, **columns,
    }


def order_mail(
    cfg: Config, order: Order, step: str, template: str, context: Mapping[str, Any],
    now: datetime, *, key: str | None = None, **columns: Any,
) -> dict[str, Any]:
    """An order's mail to the order's address, keyed by `order_key` unless `key` is given."""
    return mail_row(
        cfg, template, context, now, key=key or order_key(cfg, order, step, template),
        order_id=order.id, customer_id=order.customer_id, to_addr=order.email, **columns,
    )
