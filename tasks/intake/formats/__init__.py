"""Reading order and product files (JSON Lines or CSV) into canonical records or rejections.

Formats: Shopify REST objects as JSON Lines, our canonical schema as JSON Lines, and CSV. The
format is detected from the file's content; `fmt` overrides it. Nothing here touches the
database: a record that cannot be mapped or validated becomes a `Rejected` with its reasons.

One module per format: `shopify` (Shopify objects mapped to canonical dicts), `jsonl` (JSON
Lines of Shopify or canonical objects), `csvfile` (CSV); `common` holds what they share.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tasks.intake.formats.common import (
    IntakeError,
    _choose_format,
    _guard,
    _require_columns,
    validation_reasons,
)
from tasks.intake.formats.csvfile import (
    ORDER_CSV_REQUIRED,
    PRODUCT_CSV_REQUIRED,
    _csv_orders,
    _csv_products,
)
from tasks.intake.formats.jsonl import (
    _json_orders,
    _json_products,
    _order_json_format,
    _product_json_format,
    order_from_json,
)
from tasks.intake.formats.shopify import products_from_shopify
from tasks.intake.schema import OrderIn, ProductIn, Rejected

__all__ = [
    "ORDER_FORMATS", "PRODUCT_FORMATS", "IntakeError", "order_from_json", "products_from_shopify",
    "read_orders", "read_products", "validation_reasons",
]

ORDER_FORMATS = ("shopify", "canonical", "csv")
PRODUCT_FORMATS = ("shopify", "canonical", "csv")


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
