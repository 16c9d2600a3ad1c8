"""JSON Lines files: Shopify objects (mapped, see `shopify`) or canonical ones (as they are)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.intake.formats.common import (
    IntakeError,
    MappingError,
    _json_keys,
    _json_records,
    _short,
    _undetectable,
    _validate,
    dotted,
)
from tasks.intake.formats.shopify import _shopify_order_name, products_from_shopify, shopify_order
from tasks.intake.schema import OrderIn, ProductIn, Rejected


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
