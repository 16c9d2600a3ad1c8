"""Reading order and product files (JSON Lines or CSV) into canonical records or rejections.

Formats: Shopify REST objects as JSON Lines, our canonical schema as JSON Lines, and CSV. The
format is detected from the file's content; `fmt` overrides it. Nothing here touches the
database: a record that cannot be mapped or validated becomes a `Rejected` with its reasons.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tasks.intake.schema import OrderIn, ProductIn, Rejected, split_tags

ORDER_FORMATS = ("shopify", "canonical", "csv")
PRODUCT_FORMATS = ("shopify", "canonical", "csv")
DETECT_LINES = 50  # JSON objects looked at to tell Shopify from canonical

# No `email`: orders without an address (POS, phone) are fine.
ORDER_CSV_REQUIRED = ("order_id", "placed_at", "currency", "quantity", "unit_price")
PRODUCT_CSV_REQUIRED = ("sku", "title")

# CSV column → canonical field, per part of the order.
CSV_ORDER_FIELDS = {
    "order_id": "external_id", "order_name": "name", "email": "email",
    "placed_at": "placed_at", "currency": "currency", "financial_status": "financial_status",
    "discount_total": "discounts", "tax_total": "tax", "taxes_included": "taxes_included",
    "total": "total", "gift_note": "gift_note", "customer_note": "customer_note",
    "accepts_marketing": "accepts_marketing",
}
CSV_CUSTOMER_FIELDS = {
    "first_name": "first_name", "last_name": "last_name", "accepts_marketing": "accepts_marketing",
}
CSV_ADDRESS_FIELDS = {
    "ship_name": "name", "ship_address1": "address1", "ship_address2": "address2",
    "ship_city": "city", "ship_province_code": "province_code", "ship_zip": "zip",
    "ship_country_code": "country_code",
}
CSV_SHIPPING_FIELDS = {
    "shipping_code": "code", "shipping_title": "title", "shipping_price": "price",
}
CSV_LINE_FIELDS = {
    "sku": "sku", "title": "title", "variant_title": "variant_title", "quantity": "quantity",
    "unit_price": "unit_price", "requires_shipping": "requires_shipping",
    "variant_id": "variant_id",
}
CSV_PRODUCT_FIELDS = {
    "sku": "sku", "title": "title", "category": "category", "tags": "tags", "stock": "stock",
    "weight": "grams", "price": "price",
}

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


class IntakeError(Exception):
    """A whole file cannot be read; the message is one line, fit to print without a traceback."""


class MappingError(ValueError):
    """A record's structure is wrong before validation can even start."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


# ---------------------------------------------------------------- public entry points


def read_orders(path: Path | str, fmt: str | None = None) -> Iterator[OrderIn | Rejected]:
    """Orders from a file, in file order; the format is detected unless `fmt` is given."""
    path = Path(path)
    fmt = _choose_format(path, fmt, ORDER_FORMATS, _order_json_format)
    if fmt == "csv":
        _require_columns(path, ORDER_CSV_REQUIRED, "orders")
        return _guard(path, _csv_orders(path))
    return _guard(path, _json_orders(path, fmt))


def read_products(path: Path | str, fmt: str | None = None) -> Iterator[ProductIn | Rejected]:
    """Catalog products (one per variant SKU) from a file; format detected unless given."""
    path = Path(path)
    fmt = _choose_format(path, fmt, PRODUCT_FORMATS, _product_json_format)
    if fmt == "csv":
        _require_columns(path, PRODUCT_CSV_REQUIRED, "products")
        return _guard(path, _csv_products(path))
    return _guard(path, _json_products(path, fmt))


def detect_order_format(path: Path | str) -> str:
    return _choose_format(Path(path), None, ORDER_FORMATS, _order_json_format)


def detect_product_format(path: Path | str) -> str:
    return _choose_format(Path(path), None, PRODUCT_FORMATS, _product_json_format)


# ---------------------------------------------------------------- files and detection


def _open(path: Path) -> io.TextIOWrapper:
    if not path.is_file():
        raise IntakeError(f"{path}: no such file")
    return path.open(encoding="utf-8-sig", newline="")


def _head(path: Path, count: int) -> list[str]:
    """The first `count` non-blank lines, or IntakeError if the file is not UTF-8 text."""
    try:
        with _open(path) as handle:
            return list(islice((line for line in handle if line.strip()), count))
    except UnicodeDecodeError:
        why = "not UTF-8 text; expected JSON Lines or CSV"
        raise IntakeError(_undetectable(path, why)) from None


def _undetectable(path: Path, why: str = "expected JSON Lines or CSV") -> str:
    return f"{path.name}: cannot detect format ({why}); use --format"


def _choose_format(
    path: Path, fmt: str | None, allowed: tuple[str, ...], json_format: Callable[[Path], str]
) -> str:
    head = _head(path, 1)
    if fmt is not None:
        if fmt not in allowed:
            raise IntakeError(f"unknown format {fmt!r}; expected one of {', '.join(allowed)}")
        return fmt
    if not head:
        raise IntakeError(f"{path.name}: the file is empty")
    first = head[0].lstrip()
    if first.startswith("{"):
        return json_format(path)
    if first.startswith("[") or "," not in first:
        raise IntakeError(_undetectable(path))
    return "csv"


def _json_keys(path: Path) -> Iterator[set[str]]:
    for line in _head(path, DETECT_LINES):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            yield set(data)


def _order_json_format(path: Path) -> str:
    for keys in _json_keys(path):
        if "line_items" in keys:
            return "shopify"
        if "lines" in keys:
            return "canonical"
    raise IntakeError(_undetectable(path, "JSON objects with neither `line_items` nor `lines`"))


def _product_json_format(path: Path) -> str:
    for keys in _json_keys(path):
        if "variants" in keys:
            return "shopify"
        if "sku" in keys:
            return "canonical"
    raise IntakeError(_undetectable(path, "JSON objects with neither `variants` nor `sku`"))


def _require_columns(path: Path, required: tuple[str, ...], what: str) -> None:
    header = next(csv.reader(_head(path, 1)), [])
    missing = [name for name in required if name not in {h.strip() for h in header}]
    if missing:
        raise IntakeError(f"{path.name}: not a CSV of {what}: missing columns {', '.join(missing)}")


def _guard(path: Path, records: Iterator[Any]) -> Iterator[Any]:
    """Turn a decoding failure half-way through the file into a one-line IntakeError."""
    try:
        yield from records
    except UnicodeDecodeError as exc:
        raise IntakeError(f"{path.name}: not UTF-8 text at byte {exc.start}") from None
    except csv.Error as exc:
        raise IntakeError(f"{path.name}: unreadable CSV: {exc}") from None


# ---------------------------------------------------------------- reasons


def _clean_message(error: dict[str, Any]) -> str:
    if error["type"] == "missing":
        return "required"
    if error.get("input") is None and error["type"].endswith("_type"):
        return "required"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def dotted(loc: Iterable[Any]) -> str:
    """('lines', 0, 'sku') → 'lines[0].sku'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "_record"


def validation_reasons(
    error: ValidationError, name: Callable[[tuple[Any, ...]], str] = dotted
) -> list[dict[str, str]]:
    """One {field, reason} per pydantic error, with fields named as the input names them."""
    return [
        {"field": name(tuple(e["loc"])) if e["loc"] else "_record", "reason": _clean_message(e)}
        for e in error.errors(include_url=False)
    ]


def _shopify_order_name(loc: tuple[Any, ...]) -> str:
    head, *rest = loc
    if head == "lines" and len(rest) == 2:
        return dotted(("line_items", rest[0], SHOPIFY_LINE_NAMES.get(rest[1], rest[1])))
    if head == "shipping":
        return "shipping_lines"
    return dotted((SHOPIFY_ORDER_NAMES.get(head, head), *rest))


# ---------------------------------------------------------------- small helpers


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """Drop missing values so the model's defaults (or its "required") apply."""
    return {k: v for k, v in values.items() if v is not None and v != ""}


def _object(record: dict[str, Any], key: str) -> dict[str, Any]:
    value = record.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MappingError(key, "expected an object")
    return value


def _objects(record: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = record.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MappingError(key, "expected a list of objects")
    return value


def _name_values(record: dict[str, Any], key: str) -> dict[str, Any]:
    """Shopify's [{name, value}] lists (properties, note_attributes) as a dict."""
    return {
        str(item.get("name", item.get("key"))): item.get("value")
        for item in _objects(record, key)
        if item.get("name", item.get("key")) is not None
    }


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "y")


def _decimal(value: Any, field: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise MappingError(field, f"not a number: {value!r}") from None
    if not number.is_finite():
        raise MappingError(field, f"not a finite number: {value!r}")
    return number


def _validate(
    model: type[Any], data: dict[str, Any], name: Callable[[tuple[Any, ...]], str]
) -> Any | list[dict[str, str]]:
    """The validated model, or the per-field reasons it failed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return validation_reasons(exc, name)


# ---------------------------------------------------------------- JSON Lines


def _json_records(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | str]]:
    """(line number, raw text, object) per non-blank line; a reason string if not an object."""
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except ValueError as exc:
                yield number, text, f"not valid JSON: {exc}"
                continue
            yield number, text, data if isinstance(data, dict) else "expected a JSON object"


def _json_orders(path: Path, fmt: str) -> Iterator[OrderIn | Rejected]:
    for number, text, data in _json_records(path):
        origin = f"{path.name}:line {number}"
        if isinstance(data, str):
            yield Rejected("order", fmt, text, [{"field": "_record", "reason": data}], origin)
        else:
            yield order_from_json(data, fmt, text, origin)


def order_from_json(data: dict[str, Any], fmt: str, raw: str, origin: str) -> OrderIn | Rejected:
    """One JSON order object (Shopify or canonical) → OrderIn, or a Rejected with reasons."""
    external_id = data.get("external_id" if fmt == "canonical" else "id")
    source = str(data.get("source") or "canonical")[:20] if fmt == "canonical" else fmt
    try:
        mapped = shopify_order(data) if fmt == "shopify" else data
    except MappingError as exc:
        reasons = [{"field": exc.field, "reason": exc.reason}]
        return Rejected("order", source, raw, reasons, origin, _short(external_id))
    except (TypeError, AttributeError, ValueError) as exc:  # a shape no Shopify order has
        reasons = [{"field": "_record", "reason": f"unexpected structure: {exc}"}]
        return Rejected("order", source, raw, reasons, origin, _short(external_id))
    name = _shopify_order_name if fmt == "shopify" else dotted
    result = _validate(OrderIn, mapped, name)
    if isinstance(result, list):
        return Rejected("order", source, raw, result, origin, _short(external_id))
    return result.located(raw, origin)


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:64]


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
    })


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


def _json_products(path: Path, fmt: str) -> Iterator[ProductIn | Rejected]:
    for number, text, data in _json_records(path):
        origin = f"{path.name}:line {number}"
        if isinstance(data, str):
            yield Rejected("product", fmt, text, [{"field": "_record", "reason": data}], origin)
        elif fmt == "shopify":
            yield from products_from_shopify(data, text, origin)
        else:
            result = _validate(ProductIn, data, dotted)
            yield (Rejected("product", fmt, text, result, origin, _short(data.get("sku")))
                   if isinstance(result, list) else result)


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


# ---------------------------------------------------------------- CSV


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row with stripped header names) for each data row."""
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        for row in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}


def _csv_text(rows: list[dict[str, str]]) -> str:
    """The group's rows as CSV text, header first: the raw record we quarantine and hash."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _csv_origin(path: Path, numbers: list[int]) -> str:
    if numbers[0] == numbers[-1]:
        return f"{path.name}:line {numbers[0]}"
    return f"{path.name}:lines {numbers[0]}-{numbers[-1]}"


def _csv_orders(path: Path) -> Iterator[OrderIn | Rejected]:
    """Rows grouped by order_id (in order of first appearance), one order per group."""
    groups: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for number, row in _csv_rows(path):
        if not row.get("order_id"):
            reasons = [{"field": "order_id", "reason": "required"}]
            yield Rejected("order", "csv", _csv_text([row]), reasons, f"{path.name}:line {number}")
            continue
        groups.setdefault(row["order_id"], []).append((number, row))
    for external_id, numbered in groups.items():
        numbers, rows = [n for n, _ in numbered], [r for _, r in numbered]
        raw, origin = _csv_text(rows), _csv_origin(path, numbers)
        result = _validate(OrderIn, csv_order(rows), _csv_order_namer(numbers))
        if isinstance(result, list):
            yield Rejected("order", "csv", raw, result, origin, external_id[:64])
        else:
            yield result.located(raw, origin)


def _pick(row: dict[str, str], columns: dict[str, str]) -> dict[str, str]:
    return _compact({field: row.get(column) for column, field in columns.items()})


def csv_order(rows: list[dict[str, str]]) -> dict[str, Any]:
    """One order's CSV rows → canonical dict; order columns are read from the first row."""
    first = rows[0]
    order: dict[str, Any] = {"source": "csv", **_pick(first, CSV_ORDER_FIELDS)}
    order["customer"] = _pick(first, CSV_CUSTOMER_FIELDS)
    order["shipping"] = _pick(first, CSV_SHIPPING_FIELDS)
    address = _pick(first, CSV_ADDRESS_FIELDS)
    if address:
        order["shipping_address"] = address
    order["lines"] = [_pick(row, CSV_LINE_FIELDS) for row in rows]
    return order


def _csv_order_namer(numbers: list[int]) -> Callable[[tuple[Any, ...]], str]:
    """Name CSV columns in reasons; a line item's field also says which file line it is on."""
    by_path = {(f,): c for c, f in CSV_ORDER_FIELDS.items()}
    by_path |= {("customer", f): c for c, f in CSV_CUSTOMER_FIELDS.items()}
    by_path |= {("shipping_address", f): c for c, f in CSV_ADDRESS_FIELDS.items()}
    by_path |= {("shipping", f): c for c, f in CSV_SHIPPING_FIELDS.items()}
    line_columns = {f: c for c, f in CSV_LINE_FIELDS.items()}

    def name(loc: tuple[Any, ...]) -> str:
        if len(loc) == 3 and loc[0] == "lines" and isinstance(loc[1], int):
            return f"{line_columns.get(loc[2], loc[2])} (line {numbers[loc[1]]})"
        return by_path.get(loc, dotted(loc))

    return name


def _csv_products(path: Path) -> Iterator[ProductIn | Rejected]:
    columns = {f: c for c, f in CSV_PRODUCT_FIELDS.items()}
    for number, row in _csv_rows(path):
        raw, origin = _csv_text([row]), f"{path.name}:line {number}"
        try:
            result = _validate(ProductIn, csv_product(row), lambda loc: columns.get(loc[0],
                                                                                   dotted(loc)))
        except MappingError as exc:
            result = [{"field": exc.field, "reason": exc.reason}]
        if isinstance(result, list):
            yield Rejected("product", "csv", raw, result, origin, _short(row.get("sku") or None))
        else:
            yield result


def csv_product(row: dict[str, str]) -> dict[str, Any]:
    """A catalog CSV row → canonical product dict; `attributes` is an optional JSON object."""
    product: dict[str, Any] = _pick(row, CSV_PRODUCT_FIELDS)
    if row.get("attributes"):
        try:
            product["attributes"] = json.loads(row["attributes"])
        except ValueError as exc:
            raise MappingError("attributes", f"not valid JSON: {exc}") from None
        if not isinstance(product["attributes"], dict):
            raise MappingError("attributes", "expected a JSON object")
    return product
