"""Seeded demo data: a Shopify-shaped catalog and orders with the edge cases operators meet.

Everything is drawn from `random.Random(seed)`, so a seed always gives the same data. About 8 % of
orders are edge cases (gift notes, fragile + perishable, high value, unpaid, bad addresses, out of
stock, unknown SKU, fraud tags, cancelled) and a few are deliberately invalid (no line items, a
negative price): those must end up in quarantine, not in the journey.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

STORE_OFFSET = timezone(timedelta(hours=-8))  # America/Los_Angeles in November
EDGE_SHARE = 0.08
UNKNOWN_SKU = "NW-DISCONTINUED-999"
CENT = Decimal("0.01")


@dataclass(frozen=True)
class _Item:
    """A catalog line: product facts, variant titles, metafields and (for a few) fixed stock."""

    code: str
    title: str
    product_type: str
    tags: str
    price: str
    grams: int
    variants: str = ""  # variant titles separated by "/"; "" = one default variant
    attributes: tuple[tuple[str, str, str], ...] = ()  # (key, type, value) metafields
    stock: int | None = None  # fixed stock (the low-stock items); else random


WASH = (("care_guide", "single_line_text_field", "Wash cold, hang dry, iron low."),)
LEATHER = (("care_guide", "single_line_text_field", "Wipe clean; condition every 3 months."),)


def consumable(days: int) -> tuple[tuple[str, str, str], ...]:
    """Replenishment reminders use this: how long one unit typically lasts."""
    return (("consumable_days", "number_integer", str(days)),)


CATALOG: tuple[_Item, ...] = (
    _Item("APP-001", "Merino Crew Sweater", "Apparel", "wool, winter", "98.00", 380,
          variants="S/M/L", attributes=WASH),
    _Item("APP-002", "Organic Cotton Tee", "Apparel", "cotton, basics", "28.00", 180,
          variants="S/M/L/XL", attributes=WASH),
    _Item("APP-003", "Rain Shell Jacket", "Apparel", "outdoor, waterproof", "165.00", 520,
          variants="M/L", attributes=WASH),
    _Item("APP-004", "Wool Beanie", "Apparel", "wool, winter, accessories", "32.00", 90,
          attributes=WASH),
    _Item("APP-005", "Linen Shirt", "Apparel", "linen, summer", "74.00", 240,
          variants="M/L", attributes=WASH),
    _Item("JNS-001", "Slim Selvedge Jeans", "Jeans", "denim, selvedge", "145.00", 820,
          variants="30/32/34", attributes=WASH),
    _Item("JNS-002", "Relaxed Carpenter Jeans", "Jeans", "denim, workwear", "118.00", 900,
          variants="32/34", attributes=WASH),
    _Item("SHO-001", "Trail Runner", "Shoes", "running, outdoor", "135.00", 640,
          variants="9/10/11", attributes=LEATHER),
    _Item("SHO-002", "Leather Chelsea Boot", "Shoes", "leather, boots", "210.00", 1250,
          variants="9/10", attributes=LEATHER),
    _Item("BLT-001", "Full-Grain Leather Belt", "Belts", "leather, accessories", "68.00", 210,
          variants="32/34/36", attributes=LEATHER),
    _Item("BLT-002", "Woven Stretch Belt", "Belts", "accessories", "38.00", 150),
    _Item("GLS-001", "Crystal Wine Glasses (Set of 4)", "Glassware", "Fragile, Glass, barware",
          "89.00", 1600),
    _Item("GLS-002", "Hand-Blown Carafe", "Glassware", "fragile, glass", "72.00", 900, stock=3),
    _Item("GLS-003", "Recycled Glass Tumblers (Set of 6)", "Glassware", "fragile, glass",
          "46.00", 1400),
    _Item("CER-001", "Stoneware Mug", "Ceramics", "fragile, ceramic, kitchen", "26.00", 420,
          variants="Sand/Slate"),
    _Item("CER-002", "Serving Platter", "Ceramics", "fragile, ceramic", "64.00", 1800),
    _Item("CER-003", "Pour-Over Dripper", "Ceramics", "fragile, ceramic, coffee", "34.00", 380),
    _Item("COF-001", "Single-Origin Coffee Beans 340g", "Coffee", "perishable, coffee", "19.00",
          360, variants="Whole Bean/Ground", attributes=consumable(21)),
    _Item("COF-002", "Espresso Blend 1kg", "Coffee", "perishable, coffee", "42.00", 1020,
          attributes=consumable(45)),
    _Item("FOD-001", "Artisan Chocolate Box", "Food", "perishable, gift", "36.00", 450),
    _Item("FOD-002", "Smoked Salmon Gift Pack", "Food", "perishable, chilled, gift", "58.00", 700,
          stock=12),
    _Item("SKN-001", "Vitamin C Face Serum 30ml", "Skincare", "liquid, serum", "48.00", 120,
          attributes=consumable(30)),
    _Item("SKN-002", "Hydrating Cleanser 200ml", "Skincare", "liquid, cleanser", "24.00", 260,
          attributes=consumable(60)),
    _Item("SKN-003", "Body Lotion 400ml", "Skincare", "liquid", "29.00", 480,
          attributes=consumable(45)),
    _Item("FUR-001", "Oak Side Table", "Furniture", "oversized, heavy, oak", "320.00", 22000),
    _Item("FUR-002", "Lounge Chair", "Furniture", "oversized, heavy", "890.00", 28500,
          variants="Oat/Charcoal"),
    _Item("FUR-003", "Wall Shelf", "Furniture", "wall", "85.00", 4200),
    _Item("JWL-001", "Gold Hoop Earrings", "Jewelry", "gold, gift", "650.00", 30),
    _Item("JWL-002", "Diamond Pendant", "Jewelry", "diamond, gift", "1850.00", 25, stock=3),
    _Item("JWL-003", "Sterling Silver Bracelet", "Jewelry", "silver", "180.00", 40),
    _Item("ELE-001", "Wireless Earbuds", "Electronics", "audio", "149.00", 160,
          variants="Black/White"),
    _Item("ELE-002", "Smart Speaker", "Electronics", "audio, home", "99.00", 900),
    _Item("ELE-003", "Noise-Cancelling Headphones", "Electronics", "audio, travel", "349.00", 310),
    _Item("ELE-004", "USB-C Charger 65W", "Electronics", "accessories", "45.00", 140),
    _Item("APP-006", "Cashmere Scarf", "Apparel", "cashmere, winter, gift", "140.00", 120,
          attributes=WASH),
    _Item("APP-007", "Puffer Vest", "Apparel", "outdoor, winter", "128.00", 450,
          variants="M/L", attributes=WASH),
    _Item("SHO-003", "Canvas Sneaker", "Shoes", "canvas", "72.00", 700,
          variants="8/9/10", attributes=LEATHER),
    _Item("CER-004", "Ramen Bowl Set", "Ceramics", "fragile, ceramic, kitchen", "54.00", 2100),
    _Item("GLS-004", "Glass Storage Jars", "Glassware", "fragile, glass, kitchen", "38.00", 1900),
    _Item("SKN-004", "Lip Balm Trio", "Skincare", "gift", "16.00", 60, attributes=consumable(90)),
)

# Country → (currency, taxes included, tax rate, tax title, addresses).
COUNTRIES: dict[str, tuple[str, bool, Decimal, str, tuple[dict[str, str], ...]]] = {
    "US": ("USD", False, Decimal("0.08"), "State Tax", (
        {"address1": "412 Alder St", "city": "Portland", "province_code": "OR", "zip": "97204"},
        {"address1": "88 Clement St", "city": "San Francisco", "province_code": "CA",
            "zip": "94118"},
        {"address1": "1200 Pike St", "city": "Seattle", "province_code": "WA", "zip": "98101"},
        {"address1": "75 Ninth Ave", "city": "New York", "province_code": "NY", "zip": "10011"},
    )),
    "CA": ("CAD", False, Decimal("0.13"), "HST", (
        {"address1": "220 King St W", "city": "Toronto", "province_code": "ON", "zip": "M5H 1K4"},
        {"address1": "1055 W Georgia St", "city": "Vancouver", "province_code": "BC",
            "zip": "V6E 3P3"},
    )),
    "GB": ("GBP", True, Decimal("0.20"), "VAT", (
        {"address1": "14 Shoreditch High St", "city": "London", "zip": "E1 6PG"},
        {"address1": "3 Deansgate", "city": "Manchester", "zip": "M3 2BW"},
    )),
    "DE": ("EUR", True, Decimal("0.19"), "MwSt", (
        {"address1": "Torstrasse 101", "city": "Berlin", "zip": "10119"},
        {"address1": "Leopoldstrasse 50", "city": "München", "zip": "80802"},
    )),
}
COUNTRY_WEIGHTS = {"US": 60, "CA": 15, "GB": 15, "DE": 10}
FIRST_NAMES = ("Ava", "Liam", "Maya", "Noah", "Zoe", "Ethan", "Lena", "Omar", "Priya", "Jonas",
               "Chloe", "Mateo", "Hannah", "Kenji", "Sofia", "Felix", "Amara", "Lucas", "Ines",
                   "Theo")
LAST_NAMES = ("Nguyen", "Smith", "Okafor", "Müller", "Garcia", "Cohen", "Patel", "Brown", "Rossi",
              "Kowalski", "Tanaka", "Martin", "Schmidt", "Dubois", "Khan", "Walsh")
DISCOUNTS = {"WELCOME10": Decimal("0.10"), "FALL15": Decimal("0.15")}
EDGE_KINDS = ("gift", "fragile_perishable", "high_value", "unpaid", "missing_zip", "invalid_zip",
              "out_of_stock", "unknown_sku", "risk_tagged", "cancelled", "missing_line_items",
              "negative_price")


# ---------------------------------------------------------------- catalog


def demo_catalog(seed: int) -> list[dict[str, Any]]:
    """About 40 Shopify product objects; stock is drawn from the seed, a few items run low."""
    rng = random.Random(seed)
    return [_product(index, item, rng) for index, item in enumerate(CATALOG, start=1)]


def _product(index: int, item: _Item, rng: random.Random) -> dict[str, Any]:
    product_id = 8_000_000_000 + index
    titles = item.variants.split("/") if item.variants else ["Default Title"]
    return {
        "id": product_id,
        "title": item.title,
        "handle": item.title.lower().replace(" ", "-"),
        "vendor": "Northwind Outfitters",
        "product_type": item.product_type,
        "tags": item.tags,
        "status": "active",
        "variants": [_variant(product_id, position, item, title, rng)
                     for position, title in enumerate(titles, start=1)],
        "metafields": [{"namespace": "journeys", "key": key, "type": kind, "value": value}
                       for key, kind, value in item.attributes],
    }


def _variant(
    product_id: int, position: int, item: _Item, title: str, rng: random.Random
) -> dict[str, Any]:
    suffix = "" if title == "Default Title" else f"-{title.upper().replace(' ', '')}"
    return {
        "id": product_id * 100 + position,
        "product_id": product_id,
        "title": title,
        "sku": f"NW-{item.code}{suffix}",
        "price": item.price,
        "grams": item.grams,
        "inventory_quantity": item.stock if item.stock is not None else rng.randint(60, 400),
        "position": position,
    }


def _variants_by_type(catalog: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for product in catalog:
        for variant in product["variants"]:
            by_type.setdefault(product["product_type"], []).append(variant | {"_product": product})
    return by_type


# ---------------------------------------------------------------- customers


def _customers(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """A pool of customers; some VIP, some first-time buyers, a few with messy e-mail casing."""
    pool = []
    for index in range(count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        local = f"{first}.{last}{index}".lower().replace("ü", "ue")
        email = f"{local}@example.com"
        if rng.random() < 0.05:
            email = f" {email.title()} "
        pool.append({
            "id": 6_000_000_000 + index,
            "email": email,
            "first_name": first,
            "last_name": last,
            "accepts_marketing": rng.random() < 0.6,
            "orders_count": 0 if rng.random() < 0.4 else rng.randint(1, 14),
            "tags": "VIP" if rng.random() < 0.12 else "",
            "country": rng.choices(list(COUNTRY_WEIGHTS),
                weights=list(COUNTRY_WEIGHTS.values()))[0],
        })
    return pool


# ---------------------------------------------------------------- orders


def demo_orders(n: int, seed: int, now: datetime) -> list[dict[str, Any]]:
    """`n` Shopify order objects placed in the two days before `now`, deterministic per seed."""
    rng = random.Random(seed)
    by_type = _variants_by_type(demo_catalog(seed))
    customers = _customers(max(3, n * 2 // 3), rng)
    edges = _edge_plan(n, rng)
    orders = []
    for index in range(n):
        customer = rng.choice(customers)
        customer["orders_count"] += 1
        order = _order(index, seed, customer, _pick_lines(by_type, rng), now, rng)
        orders.append(_apply_edge(edges.get(index), order, by_type, rng))
    return orders


def _edge_plan(n: int, rng: random.Random) -> dict[int, str]:
    """Which orders are edge cases, and of which kind: every kind appears once enough orders."""
    count = round(n * EDGE_SHARE)
    kinds = list(EDGE_KINDS)
    rng.shuffle(kinds)
    positions = sorted(rng.sample(range(n), k=min(count, n)))
    return {position: kinds[i % len(kinds)] for i, position in enumerate(positions)}


def _pick_lines(
    by_type: dict[str, list[dict[str, Any]]], rng: random.Random
) -> list[tuple[dict[str, Any], int]]:
    """One to four lines of everyday products (no furniture or jewelry unless an edge case)."""
    everyday = [t for t in by_type if t not in ("Furniture", "Jewelry")]
    chosen: dict[str, tuple[dict[str, Any], int]] = {}
    for _ in range(rng.choices((1, 2, 3, 4), weights=(45, 30, 15, 10))[0]):
        variant = rng.choice(by_type[rng.choice(everyday)])
        chosen[variant["sku"]] = (variant, rng.choices((1, 2, 3), weights=(80, 15, 5))[0])
    if rng.random() < 0.04:
        variant = rng.choice(by_type[rng.choice(("Furniture", "Jewelry"))])
        chosen[variant["sku"]] = (variant, 1)
    return list(chosen.values())


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT))


def _line_item(order_id: int, position: int, variant: dict[str, Any],
    quantity: int) -> dict[str, Any]:
    product = variant["_product"]
    return {
        "id": order_id * 10 + position,
        "sku": variant["sku"],
        "title": product["title"],
        "variant_title": None if variant["title"] == "Default Title" else variant["title"],
        "quantity": quantity,
        "price": variant["price"],
        "grams": variant["grams"],
        "gift_card": False,
        "properties": [],
        "total_discount": "0.00",
        "product_id": product["id"],
        "variant_id": variant["id"],
    }


def _order_id(now: datetime, seed: int, index: int) -> int:
    """Stable for a day and seed (a rerun is a duplicate); another day or seed adds new orders."""
    return int(f"{now:%y%m%d}{seed % 1000:03d}{index:07d}")


def _order(
    index: int,
    seed: int,
    customer: dict[str, Any],
    lines: list[tuple[dict[str, Any], int]],
    now: datetime,
    rng: random.Random,
) -> dict[str, Any]:
    order_id = _order_id(now, seed, index)
    country = customer["country"]
    placed = now - timedelta(seconds=rng.randint(120, 2 * 86_400))
    items = [_line_item(order_id, pos, v, q) for pos, (v, q) in enumerate(lines, start=1)]
    order = {
        "id": order_id,
        "name": f"#{now:%y%m%d}-{1001 + index}",
        "email": customer["email"],
        "created_at": placed.astimezone(STORE_OFFSET).isoformat(timespec="seconds"),
        "currency": COUNTRIES[country][0],
        "customer_locale": "de" if country == "DE" else "en",
        "financial_status": "paid" if rng.random() < 0.9 else "authorized",
        "buyer_accepts_marketing": customer["accepts_marketing"],
        "line_items": items,
        "shipping_address": _address(customer, rng),
        "customer": {k: v for k, v in customer.items() if k != "country"},
        "note": None,
        "note_attributes": [],
        "tags": "",
        "cancelled_at": None,
        "discount_codes": [],
        "shipping_lines": [_shipping_line(items, rng)],
    }
    if rng.random() < 0.2:
        code = rng.choice(sorted(DISCOUNTS))
        order["discount_codes"] = [{"code": code, "amount": "0.00", "type": "percentage"}]
    return _price(order)


def _address(customer: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    country = customer["country"]
    address = dict(rng.choice(COUNTRIES[country][4]))
    return {
        "first_name": customer["first_name"],
        "last_name": customer["last_name"],
        "name": f"{customer['first_name']} {customer['last_name']}",
        "address1": address["address1"],
        "address2": rng.choice((None, None, None, "Apt 4B", "Suite 210")),
        "city": address["city"],
        "province_code": address.get("province_code"),
        "zip": address["zip"],
        "country_code": country,
        "phone": None,
    }


def _shipping_line(items: list[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    grams = sum(item["grams"] * item["quantity"] for item in items)
    if grams >= 20_000:
        return {"code": "FREIGHT", "title": "Freight", "price": "149.00"}
    if rng.random() < 0.25:
        return {"code": "EXPRESS", "title": "Express shipping", "price": "24.00"}
    return {"code": "STANDARD", "title": "Standard shipping", "price": "8.00"}


def _price(order: dict[str, Any]) -> dict[str, Any]:
    """Fill Shopify's money fields from the lines, discount, shipping and the country's tax."""
    currency, included, rate, title, _ = COUNTRIES[order["shipping_address"]["country_code"]]
    goods = sum((Decimal(i["price"]) * i["quantity"] for i in order["line_items"]), Decimal(0))
    codes = order["discount_codes"]
    discount = (goods * DISCOUNTS[codes[0]["code"]] if codes else Decimal(0)).quantize(CENT)
    if codes:
        codes[0]["amount"] = _money(discount)
    subtotal = goods - discount
    shipping = sum((Decimal(s["price"]) for s in order["shipping_lines"]), Decimal(0))
    tax = (subtotal * rate / (1 + rate) if included else subtotal * rate).quantize(CENT)
    order.update({
        "subtotal_price": _money(subtotal),
        "total_discounts": _money(discount),
        "total_tax": _money(tax),
        "taxes_included": included,
        "total_price": _money(subtotal + shipping + (0 if included else tax)),
        "tax_lines": [{"title": title, "rate": float(rate), "price": _money(tax)}],
    })
    return order


# ---------------------------------------------------------------- edge cases


def _apply_edge(
    kind: str | None,
    order: dict[str, Any],
    by_type: dict[str, list[dict[str, Any]]],
    rng: random.Random,
) -> dict[str, Any]:
    if kind is None:
        return order
    order["note_attributes"] = [{"name": "demo_case", "value": kind}]
    EDGE_CASES[kind](order, by_type, rng)
    return order if kind in ("missing_line_items", "negative_price") else _price(order)


def _find(by_type: dict[str, list[dict[str, Any]]], sku: str) -> dict[str, Any]:
    return next(v for variants in by_type.values() for v in variants if v["sku"] == sku)


def _replace_lines(
    order: dict[str, Any], picks: list[tuple[dict[str, Any], int]]
) -> None:
    order["line_items"] = [_line_item(order["id"], pos, v, q)
                           for pos, (v, q) in enumerate(picks, start=1)]


def _gift(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    message = rng.choice(("Happy birthday, Sam! Love, J.", "Congratulations on the new job!",
                          "Merry Christmas from all of us"))
    order["note"] = message
    order["note_attributes"].append({"name": "gift_message", "value": message})


def _fragile_perishable(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    _replace_lines(order, [(rng.choice(by_type["Glassware"]), 1),
                           (rng.choice(by_type["Coffee"]), 2), (rng.choice(by_type["Food"]), 1)])


def _high_value(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    # 2 × 1,850 + 650 in any currency: above every configured limit
    _replace_lines(order, [(_find(by_type, "NW-JWL-002"), 2), (_find(by_type, "NW-JWL-001"), 1)])
    order["financial_status"] = "paid"


def _unpaid(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    order["financial_status"] = "pending"


def _to_us(order: dict[str, Any]) -> None:
    order["shipping_address"].update({"country_code": "US", "city": "Portland",
                                      "province_code": "OR", "address1": "412 Alder St"})
    order["currency"] = "USD"


def _missing_zip(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    _to_us(order)
    order["shipping_address"]["zip"] = None


def _invalid_zip(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    _to_us(order)
    order["shipping_address"]["zip"] = rng.choice(("9720", "ABCDE", "972041"))


def _out_of_stock(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    carafe = _find(by_type, "NW-GLS-002")
    _replace_lines(order, [(carafe, carafe["inventory_quantity"] + 2)])


def _unknown_sku(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    order["line_items"][0].update({"sku": UNKNOWN_SKU, "title": "Vintage Field Watch",
                                   "variant_title": None, "price": "120.00"})


def _risk_tagged(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    order["tags"] = "fraud-suspected, manual-review"
    order["note_attributes"].append({"name": "risk_score", "value": "0.92"})


def _cancelled(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    order["financial_status"] = "voided"
    order["cancelled_at"] = order["created_at"]


def _missing_line_items(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    del order["line_items"]


def _negative_price(order: dict[str, Any], by_type: Any, rng: random.Random) -> None:
    order["line_items"][0]["price"] = "-12.00"


EDGE_CASES = {
    "gift": _gift, "fragile_perishable": _fragile_perishable, "high_value": _high_value,
    "unpaid": _unpaid, "missing_zip": _missing_zip, "invalid_zip": _invalid_zip,
    "out_of_stock": _out_of_stock, "unknown_sku": _unknown_sku, "risk_tagged": _risk_tagged,
    "cancelled": _cancelled, "missing_line_items": _missing_line_items,
    "negative_price": _negative_price,
}
INVALID_KINDS = frozenset({"missing_line_items", "negative_price"})
