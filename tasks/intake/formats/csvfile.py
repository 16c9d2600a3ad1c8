"""CSV files: order rows grouped by order_id, one product per row."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tasks.intake.formats.common import MappingError, _compact, _open, _short, _validate, dotted
from tasks.intake.schema import OrderIn, ProductIn, Rejected

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
