"""Packing slips and invoices: HTML rendered from configs/templates/documents/.

Templates are operator-editable, so they run in Jinja2's sandbox with autoescape and
StrictUndefined, and are parsed once per process. The context is plain data with display-ready
strings (money, dates) built from the order and the packing plan stored with it.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, get_day_names
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy.orm import object_session

from tasks.config import Config, StoreConfig
from tasks.i18n import enable_i18n
from tasks.messaging.money import address_lines, format_money, order_locale
from tasks.store.models import Order, OrderLine

DOCUMENT_KINDS = ("packing_slip", "invoice")


@lru_cache(maxsize=4)
def template_environment(templates_dir: Path) -> SandboxedEnvironment:
    """One sandboxed environment per template folder; it caches parsed templates."""
    return enable_i18n(SandboxedEnvironment(
        loader=FileSystemLoader(templates_dir),
        autoescape=True,
        undefined=StrictUndefined,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    ))


def documents_dir(config: Config) -> Path:
    return config.dir / "templates" / "documents"


def render_document(templates_dir: Path, kind: str, context: dict[str, Any]) -> str:
    return template_environment(templates_dir).get_template(f"{kind}.html").render(context)


def render_order_documents(
    order: Order, packing: dict[str, Any], config: Config, kinds: tuple[str, ...] = DOCUMENT_KINDS
) -> dict[str, bytes]:
    """{kind: UTF-8 HTML} for each of the `kinds` of document the order gets at packing."""
    context = document_context(order, packing, config.store)
    return {kind: render_document(documents_dir(config), kind, context).encode() for kind in kinds}


def document_locale(order: Order, store: StoreConfig) -> str:
    customer_locale = order.customer.locale if order.customer else None
    return order_locale(order.locale, customer_locale, store.default_locale)


def document_context(order: Order, packing: dict[str, Any], store: StoreConfig) -> dict[str, Any]:
    locale = document_locale(order, store)

    def money(amount: Decimal) -> str:
        return format_money(amount, order.currency, locale)

    return {
        "lang": locale.split("_")[0],
        "store": store.model_dump(),
        "order": _order_summary(order, store, locale),
        "ship_to": address_lines(order.shipping_address or {}, locale),
        "items": [_item(line, money) for line in order.lines],
        # What goes in the parcel: lines that need no shipping (gift cards, downloads) do not.
        "packed_items": [_item(line, money, line.kept_quantity) for line in order.lines
                         if line.requires_shipping is not False and line.kept_quantity],
        "totals": _totals(order, money),
        "packing": _packing_summary(packing, locale, money),
        "gift_note": (order.gift_note or "").strip() or None,
        "customer_note": (order.customer_note or "").strip() or None,
        # Made at packing (tasks/pack.py packing_plan); plans stored before it have none.
        "returns_url": packing.get("returns_url"),
    }


def _order_summary(order: Order, store: StoreConfig, locale: str) -> dict[str, Any]:
    placed = order.placed_at.astimezone(ZoneInfo(store.timezone))
    return {
        "name": order.name or order.external_id,
        "external_id": order.external_id,
        "date": format_date(placed.date(), format="long", locale=locale),
        "email": order.email,
        "shipping_method": order.shipping_title,
        "replaces": replaced_order_name(order),  # None, or the order a replacement replaces
    }


def replaced_order_name(order: Order) -> str | None:
    """The display number of the order a replacement (tasks/replacements.py) replaces. One
    lookup per replacement (rare; usually already in the session), none for other orders."""
    if order.replaces_order_id is None:
        return None
    session = object_session(order)
    original = session.get(Order, order.replaces_order_id) if session is not None else None
    return (original.name or original.external_id) if original is not None else None


def _item(line: OrderLine, money: Any, quantity: int | None = None) -> dict[str, Any]:
    """A line as sold, or with `quantity` (the units kept after refunds: what is packed)."""
    quantity = line.quantity if quantity is None else quantity
    return {
        "sku": line.sku or "",
        "title": line.title,
        "variant": line.variant_title,
        "quantity": quantity,
        "unit_price": money(line.unit_price),
        "line_total": money(line.unit_price * quantity),
    }


def _totals(order: Order, money: Any) -> dict[str, Any]:
    codes = [
        str(d["code"]) for d in order.discount_codes or [] if isinstance(d, dict) and d.get("code")
    ]
    return {
        "subtotal": money(order.subtotal),
        "discounts": money(-order.discounts) if order.discounts else None,
        "discount_codes": ", ".join(codes),
        "shipping": money(order.shipping),
        "tax": money(order.tax),
        "taxes_included": order.taxes_included,
        "total": money(order.total),
    }


def _packing_summary(packing: dict[str, Any], locale: str, money: Any) -> dict[str, Any]:
    instructions = packing.get("instructions", [])
    return {
        "materials": [i for i in instructions if i["kind"] == "material"],
        "handling": [i for i in instructions if i["kind"] == "handling"],
        "labels": packing.get("labels", []),
        "carrier": carrier_notes(packing.get("carrier", {}), locale),
        "insured_value": money(Decimal(packing["insured_value"]))
        if packing.get("insured")
        else None,
        "inserts": [_insert_view(insert, locale) for insert in packing.get("inserts", [])],
    }


def _insert_view(insert: dict[str, Any], locale: str) -> dict[str, Any]:
    """An insert with its expiry date (if any) formatted for the reader."""
    if "expires_on" not in insert:
        return insert
    expires = format_date(date.fromisoformat(insert["expires_on"]), format="long", locale=locale)
    return {**insert, "expires": expires}


def carrier_notes(carrier: dict[str, Any], locale: str) -> list[str]:
    """The combined carrier constraints as short sentences for the packer."""
    notes = []
    if carrier.get("max_transit_days") is not None:
        notes.append(f"Service of at most {carrier['max_transit_days']} transit days")
    if carrier.get("ship_weekdays") is not None:
        days = get_day_names("wide", locale=locale)
        notes.append(
            "Ship only on: "
            + (
                ", ".join(days[d] for d in carrier["ship_weekdays"])
                or "no day satisfies every rule"
            )
        )
    if carrier.get("methods") is not None:
        notes.append(
            "Methods: " + (", ".join(carrier["methods"]) or "no method satisfies every rule")
        )
    if carrier.get("no_air"):
        notes.append("Ground only - no air transport")
    if carrier.get("signature"):
        notes.append("Signature required on delivery")
    return notes
