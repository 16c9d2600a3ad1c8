"""Packing slips and invoices: HTML rendered from configs/templates/documents/, and PDF.

Templates are operator-editable, so they run in Jinja2's sandbox with autoescape and
StrictUndefined, and are parsed once per process. The context is plain data with display-ready
strings (money, dates) built from the order and the packing plan stored with it; the invoice's
figures come from tasks/invoices.py. The store's logo is embedded (a data: URI), never linked.
PDFs are rendered from the same HTML by WeasyPrint, which fetches nothing (`pdf_pages`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date, get_day_names
from babel.numbers import format_percent
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy.orm import object_session

from tasks.config import Config, StoreConfig
from tasks.config.store import logo_data_uri
from tasks.i18n import available_languages, enable_i18n, gettext_names, locales_dir
from tasks.invoices import buyer_vat_id, invoice_totals, vat_breakdown
from tasks.messaging.money import address_lines, format_money, order_locale, resolve_locale
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
    """In the context's `locale` (document_context's), through the config folder's catalogs."""
    words = gettext_names(locales_dir(templates_dir.parent.parent), context.get("locale"), None)
    template = template_environment(templates_dir).get_template(f"{kind}.html")
    logo = logo_data_uri(context["store"].get("logo"), templates_dir.parent.parent)
    return template.render({**context, **words, "logo": logo})


def render_order_documents(
    order: Order, packing: dict[str, Any], config: Config, kinds: tuple[str, ...] = DOCUMENT_KINDS
) -> dict[str, bytes]:
    """{kind: UTF-8 HTML} for each of the `kinds` of document the order gets at packing."""
    languages = available_languages(locales_dir(config.dir))
    context = document_context(order, packing, config.store, languages)
    return {kind: render_document(documents_dir(config), kind, context).encode() for kind in kinds}


def document_locale(order: Order, store: StoreConfig,
                    languages: Collection[str] | None = None) -> str:
    """The order's locale, else its customer's, else the store's; with `languages` (those with
    a catalog) the first whose words can be translated too."""
    customer_locale = order.customer.locale if order.customer else None
    return order_locale(order.locale, customer_locale, store.default_locale, languages)


def document_context(order: Order, packing: dict[str, Any], store: StoreConfig,
                     languages: Collection[str] | None = None) -> dict[str, Any]:
    locale = document_locale(order, store, languages)

    def money(amount: Decimal) -> str:
        return format_money(amount, order.currency, locale)

    return {
        "lang": locale.split("_")[0],
        "locale": locale,  # the language render_document speaks
        "store": store.model_dump(),
        "order": _order_summary(order, store, locale),
        "ship_to": address_lines(order.shipping_address or {}, locale),
        "items": [_item(line, money) for line in order.lines],
        # What goes in the parcel: lines that need no shipping (gift cards, downloads) do not.
        "packed_items": [_item(line, money, line.kept_quantity) for line in order.lines
                         if line.requires_shipping is not False and line.kept_quantity],
        "totals": _totals(order, money),
        "invoice": _invoice_view(order, packing, store, locale, money),
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
    """The invoice's rows as printed (tasks/invoices.py: they always add up to the total)."""
    totals = invoice_totals(order)
    codes = [
        str(d["code"]) for d in order.discount_codes or [] if isinstance(d, dict) and d.get("code")
    ]

    def signed(amount: Decimal) -> str | None:  # a row shown only when there is something
        return money(amount) if amount else None

    return {
        "sold": money(totals.items),
        "discounts": signed(-totals.discounts),
        "discount_codes": ", ".join(codes),
        "subtotal": money(totals.subtotal),
        "shipping": money(totals.shipping),
        "shipping_discount": signed(-totals.shipping_discount),
        "tax": money(totals.tax),
        "taxes_included": totals.taxes_included,
        "other": signed(totals.other),
        "other_is_charge": totals.other > 0,
        "total": money(totals.total),
    }


def _invoice_view(
    order: Order, packing: dict[str, Any], store: StoreConfig, locale: str, money: Any
) -> dict[str, Any]:
    """Number and issue date (issued at packing, kept in the plan), both parties' VAT numbers,
    the tax per rate and how the order was paid. A plan from before invoices were numbered
    has neither: the invoice then shows the order's number, as it did."""
    issued = packing.get("invoice") or {}
    rows = vat_breakdown(order, invoice_totals(order))
    return {
        "number": issued.get("number") or order.name or order.external_id,
        "date": format_date(date.fromisoformat(issued["issued_on"]), format="long",
                            locale=locale) if issued.get("issued_on") else None,
        "seller_vat_id": store.vat_id,
        "buyer_vat_id": buyer_vat_id(order, store),
        "vat": [{"title": row.title, "rate": _percent(row.rate, locale), "untaxed": row.rate == 0,
                 "net": money(row.net), "tax": money(row.tax)} for row in rows],
        # EU B2B across borders: VAT-registered buyer, no VAT charged (the invoice must say why)
        "reverse_charge": bool(store.vat_id and buyer_vat_id(order, store)) and not order.tax,
        "payment_status": (order.financial_status or "").lower(),
        "payment_methods": [str(g).strip() for g in order.payment_gateways or [] if str(g).strip()],
    }


def _percent(rate: Decimal | None, locale: str) -> str | None:
    """19 %, 7.25% in the reader's way of writing them; None for an untaxed row."""
    if rate is None:
        return None
    return format_percent(rate, format="#,##0.###%", locale=resolve_locale(locale))


def _packing_summary(packing: dict[str, Any], locale: str, money: Any) -> dict[str, Any]:
    instructions = packing.get("instructions", [])
    return {
        "materials": [i for i in instructions if i["kind"] == "material"],
        "handling": [i for i in instructions if i["kind"] == "handling"],
        "labels": packing.get("labels", []),
        "carrier": carrier_view(packing.get("carrier", {}), locale),
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


def carrier_view(carrier: dict[str, Any], locale: str) -> dict[str, Any]:
    """The combined carrier constraints with weekday names in the reader's language; the
    packing slip words them (None: no rule restricts it; []: the rules leave no choice)."""
    weekdays = carrier.get("ship_weekdays")
    days = get_day_names("wide", locale=resolve_locale(locale))
    return {
        "max_transit_days": carrier.get("max_transit_days"),
        "ship_weekdays": None if weekdays is None else [days[d] for d in weekdays],
        "methods": carrier.get("methods"),
        "no_air": bool(carrier.get("no_air")),
        "signature": bool(carrier.get("signature")),
    }


# --- PDF -------------------------------------------------------------------------------------


def pdf_pages(html: str | bytes) -> Any:
    """A rendered document (weasyprint.Document: its pages can be combined with others').

    Nothing is fetched: the only resources a document may hold are data: URIs (the logo), so
    an operator's template or a customer's text can never make the renderer reach out."""
    import weasyprint  # ~2 s to import: only where PDFs are made
    from weasyprint.urls import URLFetcher

    text = html.decode() if isinstance(html, bytes) else html
    fetcher = URLFetcher(allowed_protocols={"data"})
    return weasyprint.HTML(string=text, url_fetcher=fetcher).render()


def render_pdf(html: str | bytes) -> bytes:
    """The document as PDF; the same HTML gives the same bytes (no dates or ids in it)."""
    return pdf_pages(html).write_pdf()


def combined_pdf(documents: list[Any]) -> bytes:
    """One PDF of several rendered documents' pages, in the order given (a print batch)."""
    pages = [page for document in documents for page in document.pages]
    return documents[0].copy(pages).write_pdf()
