"""Shopify REST objects (orders, products with variants) as canonical dicts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

from tasks.intake.formats.common import (
    MappingError,
    _compact,
    _decimal,
    _flag,
    _name_values,
    _object,
    _objects,
    _short,
    _validate,
    dotted,
)
from tasks.intake.schema import ProductIn, Rejected, split_tags

# Canonical field → the Shopify field a reason should name.
SHOPIFY_ORDER_NAMES = {
    "external_id": "id", "placed_at": "created_at", "subtotal": "subtotal_price",
    "discounts": "total_discounts", "tax": "total_tax", "total": "total_price",
    "shipping": "shipping_lines", "lines": "line_items", "customer_note": "note",
    "gift_note": "note_attributes", "locale": "customer_locale",
    "accepts_marketing": "buyer_accepts_marketing", "tip": "total_tip_received",
    "duties": "original_total_duties_set", "additional_fees": "original_total_additional_fees_set",
}

# Note attributes (names compared lower-case, `-` and space as `_`) that carry a gift message.
GIFT_NOTE_ATTRIBUTES = ("gift_message", "gift_note")
SHOPIFY_LINE_NAMES = {"unit_price": "price", "external_id": "id"}
SHOPIFY_VARIANT_NAMES = {"stock": "inventory_quantity"}
SHOPIFY_PRODUCT_NAMES = {"category": "product_type", "external_id": "id"}


def _shopify_order_name(loc: tuple[Any, ...]) -> str:
    head, *rest = loc
    if head == "lines" and len(rest) == 2:
        return dotted(("line_items", rest[0], SHOPIFY_LINE_NAMES.get(rest[1], rest[1])))
    if head == "shipping":
        return "shipping_lines"
    return dotted((SHOPIFY_ORDER_NAMES.get(head, head), *rest))


def shopify_order(obj: dict[str, Any]) -> dict[str, Any]:
    """A Shopify REST order object as a canonical order dict (validated afterwards)."""
    customer = _object(obj, "customer")
    notes = _name_values(obj, "note_attributes")
    consent = _shopify_consent(obj, customer)
    return _compact({
        "source": "shopify",
        "external_id": obj.get("id"),
        "name": obj.get("name"),
        "email": obj.get("email") or obj.get("contact_email") or customer.get("email"),
        "placed_at": obj.get("created_at"),
        "currency": obj.get("currency"),
        "financial_status": obj.get("financial_status"),
        "subtotal": obj.get("subtotal_price"),
        "discounts": obj.get("total_discounts"),
        "discount_codes": _shopify_entries(obj, "discount_codes", ("code", "amount", "type")),
        "shipping": _shopify_shipping(_objects(obj, "shipping_lines")),
        "tax": obj.get("total_tax"),
        "tax_lines": _shopify_entries(obj, "tax_lines", ("title", "rate", "price")),
        "taxes_included": obj.get("taxes_included"),
        "tip": obj.get("total_tip_received"),
        "duties": None if _flag(obj.get("duties_included")) else _shopify_total(obj, "duties"),
        "additional_fees": _shopify_total(obj, "additional_fees"),
        "total": obj.get("total_price"),
        "accepts_marketing": consent,
        "lines": [_shopify_line(item, i) for i, item in enumerate(_objects(obj, "line_items"))],
        "shipping_address": _shopify_address(_object(obj, "shipping_address")),
        "customer": _shopify_customer(customer, consent),
        "customer_note": obj.get("note"),
        "gift_note": _gift_note(notes),
        "note_attributes": notes,
        "tags": obj.get("tags"),
        "cancelled_at": obj.get("cancelled_at"),
        "locale": obj.get("customer_locale"),
        "payment_gateways": _gateways(obj),
    })


def _gateways(obj: dict[str, Any]) -> list[str] | None:
    """`payment_gateway_names` (["shopify_payments", "gift_card"]); older bodies: `gateway`."""
    names = obj.get("payment_gateway_names")
    if not isinstance(names, list):
        names = [obj.get("gateway")]
    return [str(name).strip() for name in names if name and str(name).strip()] or None


def _shopify_entries(
    obj: dict[str, Any], key: str, fields: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The fields we keep from each entry of a Shopify list (discount codes, tax lines)."""
    return [_compact({name: entry.get(name) for name in fields}) for entry in _objects(obj, key)]


def _shopify_consent(obj: dict[str, Any], customer: dict[str, Any]) -> bool:
    """Consent if the buyer ticked the box at checkout or the customer is subscribed."""
    email_consent = customer.get("email_marketing_consent")
    subscribed = isinstance(email_consent, dict) and email_consent.get("state") == "subscribed"
    return (_flag(obj.get("buyer_accepts_marketing"))
            or _flag(customer.get("accepts_marketing")) or subscribed)


def _gift_note(notes: dict[str, Any]) -> Any:
    """The gift message among the note attributes (Shopify's `note` is not one)."""
    by_name = {name.strip().lower().replace("-", "_").replace(" ", "_"): value
               for name, value in notes.items()}
    return next((by_name[name] for name in GIFT_NOTE_ATTRIBUTES if by_name.get(name)), None)


def _shopify_total(obj: dict[str, Any], name: str) -> Any:
    """Duties or additional fees in the shop's currency, as counted in `total_price` (the
    original total; the `current_` set, which reflects later edits, only when it is missing)."""
    for key in (f"original_total_{name}_set", f"current_total_{name}_set"):
        amount = _object(_object(obj, key), "shop_money").get("amount")
        if amount is not None:
            return amount
    return None


def _allocated(entry: dict[str, Any], field: str) -> Decimal:
    """The sum of an entry's `discount_allocations` amounts (line items, shipping lines)."""
    allocations = _objects(entry, "discount_allocations")
    return sum((_decimal(a.get("amount", 0), f"{field}.discount_allocations[{j}].amount")
                for j, a in enumerate(allocations)), Decimal(0))


def _shopify_shipping(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """All shipping lines summed, less their discounts (as `total_price` counts them); code and
    title from the first."""
    if not lines:
        return {}
    prices = [_decimal(line.get("price", 0), f"shipping_lines[{i}].price")
              - _allocated(line, f"shipping_lines[{i}]") for i, line in enumerate(lines)]
    first = lines[0]
    return _compact({"code": first.get("code"), "title": first.get("title"), "price": sum(prices)})


def _shopify_line(item: dict[str, Any], index: int) -> dict[str, Any]:
    return _compact({
        "external_id": item.get("id"),
        "sku": item.get("sku"),
        "variant_id": item.get("variant_id"),
        "title": item.get("title") or item.get("name"),
        "variant_title": item.get("variant_title"),
        "quantity": item.get("quantity"),
        "unit_price": item.get("price"),
        "total_discount": _line_discount(item, index),
        "grams": item.get("grams"),
        "gift_card": item.get("gift_card"),
        "requires_shipping": item.get("requires_shipping"),
        "properties": _name_values(item, "properties"),
    })


def _line_discount(item: dict[str, Any], index: int) -> Any:
    """`total_discount`, or the line's discount allocations when that is absent or zero (newer
    API versions put discounts there). Per-line `tax_lines` are not kept: no column holds them."""
    given = item.get("total_discount")
    if given not in (None, "") and _decimal(given, f"line_items[{index}].total_discount"):
        return given
    allocated = _allocated(item, f"line_items[{index}]")
    return allocated if allocated else given


def _shopify_address(address: dict[str, Any]) -> dict[str, Any] | None:
    if not address:
        return None
    full_name = " ".join(filter(None, (address.get("first_name"), address.get("last_name"))))
    keys = ("address1", "address2", "city", "province_code", "zip", "country_code", "phone")
    return _compact({"name": address.get("name") or full_name} | {k: address.get(k) for k in keys})


def _shopify_customer(customer: dict[str, Any], consent: bool) -> dict[str, Any]:
    return _compact({
        "external_id": customer.get("id"),
        "email": customer.get("email"),
        "first_name": customer.get("first_name"),
        "last_name": customer.get("last_name"),
        "accepts_marketing": consent,
        "orders_count": customer.get("orders_count"),
        "tags": split_tags(customer.get("tags")),  # "" means "no tags", not "unknown"
        "locale": customer.get("locale"),
        "timezone": customer.get("timezone"),
    })


def products_from_shopify(
    obj: dict[str, Any], raw: str, origin: str
) -> Iterator[ProductIn | Rejected]:
    """One ProductIn per valid variant; the invalid variants' reasons in one Rejected."""
    external_id = _short(obj.get("id"))
    try:
        variants = _objects(obj, "variants")
        attributes = _shopify_attributes(obj)
    except MappingError as exc:
        reasons = [{"field": exc.field, "reason": exc.reason}]
        yield Rejected("product", "shopify", raw, reasons, origin, external_id)
        return
    if not variants:
        variants_reason = [{"field": "variants", "reason": "a product needs at least one variant"}]
        yield Rejected("product", "shopify", raw, variants_reason, origin, external_id)
        return
    reasons: list[dict[str, str]] = []
    for index, variant in enumerate(variants):
        result = _validate(ProductIn, _shopify_variant(obj, variant, attributes),
                           _variant_namer(index))
        if isinstance(result, list):
            reasons.extend(result)
        else:
            yield result
    if reasons:
        yield Rejected("product", "shopify", raw, reasons, origin, external_id)


def _shopify_variant(
    product: dict[str, Any], variant: dict[str, Any], attributes: dict[str, Any]
) -> dict[str, Any]:
    title = product.get("title")
    variant_title = variant.get("title")
    if title and variant_title and variant_title != "Default Title":
        title = f"{title} - {variant_title}"
    return _compact({
        "sku": variant.get("sku") or _variant_sku(variant),
        "title": title,
        "category": product.get("product_type"),
        "tags": product.get("tags"),
        "stock": variant.get("inventory_quantity"),
        "grams": variant.get("grams"),
        "price": variant.get("price"),
        "attributes": attributes | _shopify_ids(product, variant),
    })


def _variant_sku(variant: dict[str, Any]) -> str | None:
    """A variant without SKU is still one product: Shopify's variant id names it (order lines
    without SKU find it by the same id)."""
    variant_id = variant.get("id")
    if isinstance(variant_id, int) and not isinstance(variant_id, bool) and variant_id > 0:
        return f"shopify-variant-{variant_id}"
    return None


def _shopify_ids(product: dict[str, Any], variant: dict[str, Any]) -> dict[str, str]:
    """Shopify's product and variant ids, as text (products/delete names the product id)."""
    ids = {"shopify_product_id": product.get("id"), "shopify_variant_id": variant.get("id")}
    return {name: str(value) for name, value in ids.items()
            if value is not None and not isinstance(value, bool | dict | list)}


def _variant_namer(index: int) -> Callable[[tuple[Any, ...]], str]:
    def name(loc: tuple[Any, ...]) -> str:
        head, *rest = loc
        if head in ("title", "category", "tags", "attributes"):
            return dotted((SHOPIFY_PRODUCT_NAMES.get(head, head), *rest))
        return dotted(("variants", index, SHOPIFY_VARIANT_NAMES.get(head, head), *rest))

    return name


def _shopify_attributes(product: dict[str, Any]) -> dict[str, Any]:
    """Metafields (any namespace) as attributes; integer metafields become ints."""
    attributes: dict[str, Any] = {}
    for field in _objects(product, "metafields"):
        value = field.get("value")
        if field.get("type") == "number_integer":
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise MappingError(f"metafields.{field.get('key')}", "not an integer") from None
        if field.get("key"):
            attributes[str(field["key"])] = value
    return attributes
