"""Invoices: the number and date issued at packing, and what an invoice says about the money.

Numbering: every packed order gets one invoice, numbered in the store's gapless series
(`invoice_prefix` in configs/store.yaml, e.g. INV-2026-000123; tasks/numbering.py) in the
packing transaction that renders it. A rolled-back packing gives its numbers back; packing an
order again (a rerun, a reopened step) finds its invoice and takes no number. The issue date
is the day of issue in the store's time zone; the order's own date is printed beside it.

Figures (`invoice_totals`): the rows an invoice prints always add up to the order's total, for
every discount combination: items − discounts = subtotal; subtotal + shipping − shipping
discount + tax (unless prices include it) + other charges = total. "Other" is what the total
holds beyond goods, shipping and tax (a tip, duties, fees; or an unexplained difference, shown
as such, never hidden). `vat_breakdown` splits the taxed amount by rate from the order's tax
lines: net, rate and tax per rate (EU invoices must show them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from babel.numbers import get_currency_precision
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from tasks.config import StoreConfig
from tasks.numbering import lock_series, series_prefix, take_numbers
from tasks.store.models import Invoice, Order

ZERO = Decimal(0)
SHIPPING_DISCOUNT_TYPE = "shipping"  # Shopify's discount code type for free/cheaper shipping


# --- numbering -------------------------------------------------------------------------------


def invoices_of(session: Session, order_ids: Sequence[int]) -> dict[int, Invoice]:
    if not order_ids:
        return {}
    query = select(Invoice).where(Invoice.order_id.in_(sorted(set(order_ids))))
    return {invoice.order_id: invoice for invoice in session.scalars(query)}


def issue_invoices(
    session: Session, orders: Sequence[Order], now: datetime, store: StoreConfig
) -> dict[int, Invoice]:
    """order id → its invoice, numbering (in the order given) those that have none yet.

    The series row stays locked until the caller commits: call this late in the transaction.
    """
    found = invoices_of(session, [o.id for o in orders])
    if all(o.id in found for o in orders):
        return found  # nothing to number: the series is not locked
    series = series_prefix(store.invoice_prefix, store.timezone, now)
    issued = lock_series(session, series)
    found = invoices_of(session, [o.id for o in orders])  # a concurrent packer's, if any
    new = [o for o in dict.fromkeys(orders) if o.id not in found]
    numbers = take_numbers(session, series, issued, len(new))
    today = now.astimezone(ZoneInfo(store.timezone)).date()
    session.execute(insert(Invoice), [  # one executemany, whatever the batch size
        {"order_id": o.id, "number": n, "issued_at": now, "issued_on": today}
        for o, n in zip(new, numbers, strict=True)])
    return invoices_of(session, [o.id for o in orders])


def invoice_numbers(session: Session, orders: Sequence[Order]) -> dict[int, str]:
    """What each order's invoice is numbered; an order never invoiced by number (packed before
    invoices were numbered, or not packed) shows its display number, as its invoice did."""
    numbers = {oid: inv.number for oid, inv in invoices_of(session, [o.id for o in orders]).items()}
    return {o.id: numbers.get(o.id) or o.name or o.external_id for o in orders}


def invoice_reference(invoice: Invoice) -> dict[str, str]:
    """What the packing plan keeps of the invoice, so every render prints the same."""
    return {"number": invoice.number, "issued_on": invoice.issued_on.isoformat()}


# --- what the invoice says ----------------------------------------------------------------------


def minor_unit(currency: str) -> Decimal:
    """0.01 for USD, 1 for JPY (zero-decimal), 0.001 for KWD."""
    return Decimal(1).scaleb(-get_currency_precision(currency))


@dataclass(frozen=True)
class Totals:
    items: Decimal  # every line at its unit price × quantity, as sold
    discounts: Decimal  # off the goods
    subtotal: Decimal  # the goods after discounts
    shipping: Decimal  # before its discount
    shipping_discount: Decimal
    tax: Decimal
    taxes_included: bool  # prices include the tax: it is shown, not added
    other: Decimal  # tip, duties, fees; or a difference nothing above explains
    total: Decimal

    @property
    def tax_added(self) -> Decimal:
        return ZERO if self.taxes_included else self.tax

    def adds_up(self) -> bool:
        return (self.items - self.discounts == self.subtotal and
                self.subtotal + self.shipping - self.shipping_discount + self.tax_added
                + self.other == self.total)


def invoice_totals(order: Order) -> Totals:
    """The rows the invoice prints, from the order as stored (Shopify's meanings: `subtotal`
    is the goods after discounts, `discounts` all discounts, shipping's included, `shipping`
    what shipping cost after its discount)."""
    sold = sum((line.unit_price * line.quantity for line in order.lines), ZERO)
    goods_discount = max(sold - order.subtotal, ZERO)
    tax_added = ZERO if order.taxes_included else order.tax
    unexplained = order.total - (order.subtotal + order.shipping + tax_added)
    # Discounts the subtotal does not show: a shipping discount (shipping is stored after it),
    # or an order-level discount taken from the total alone (a shortfall of the total).
    beyond = max(order.discounts - goods_discount, ZERO)
    late_discount = min(max(-unexplained, ZERO), beyond)
    shipping_discount = beyond - late_discount if _has_shipping_code(order) else ZERO
    discounts = goods_discount + late_discount
    items = max(sold, order.subtotal)
    return Totals(
        items=items, discounts=discounts, subtotal=items - discounts,
        shipping=order.shipping + shipping_discount, shipping_discount=shipping_discount,
        tax=order.tax, taxes_included=order.taxes_included,
        other=unexplained + late_discount, total=order.total,
    )


def _has_shipping_code(order: Order) -> bool:
    return any(isinstance(code, dict) and code.get("type") == SHIPPING_DISCOUNT_TYPE
               for code in order.discount_codes or [])


@dataclass(frozen=True)
class VatRow:
    title: str
    rate: Decimal | None  # None: the part of the order no tax line covers
    net: Decimal
    tax: Decimal


def vat_breakdown(order: Order, totals: Totals) -> list[VatRow]:
    """Net, rate and tax per rate. Each rate's net is its tax ÷ rate (the tax lines give no
    base); when every rate's net comes out as the whole net amount the taxes are stacked on
    one base (US state + county), else the rates split it (EU standard + reduced rate) and
    what no rate covers (untaxed shipping) is a row of its own. Rounding stays inside the
    largest row, so the rows add up to the invoice exactly."""
    charged = totals.subtotal + totals.shipping - totals.shipping_discount
    net_total = charged - totals.tax if totals.taxes_included else charged
    groups = _tax_groups(order.tax_lines or [])
    if not groups:
        return [VatRow("", None, net_total, totals.tax)] if totals.tax else []
    unit = minor_unit(order.currency)
    slack = (len(order.lines) + 2) * unit  # each taxed line and shipping rounds its tax once
    implied = {key: (tax / key[1]).quantize(unit) for key, tax in groups.items()}
    if all(abs(base - net_total) * key[1] <= slack for key, base in implied.items()):
        return [VatRow(title, rate, net_total, tax) for (title, rate), tax in groups.items()]
    rows = [VatRow(title, rate, implied[(title, rate)], tax)
            for (title, rate), tax in groups.items()]
    rest = net_total - sum((row.net for row in rows), ZERO)
    largest = max(range(len(rows)), key=lambda i: rows[i].net)
    if rest > 0 and rest * rows[largest].rate > slack:
        return [*rows, VatRow("", ZERO, rest, ZERO)]
    rows[largest] = VatRow(rows[largest].title, rows[largest].rate, rows[largest].net + rest,
                           rows[largest].tax)
    return rows


def _tax_groups(tax_lines: list[dict[str, Any]]) -> dict[tuple[str, Decimal], Decimal]:
    """(title, rate) → tax, in the order the lines came; lines without a rate left out."""
    groups: dict[tuple[str, Decimal], Decimal] = {}
    for line in tax_lines:
        rate = Decimal(str(line.get("rate") or 0))
        if rate > 0:
            key = (str(line.get("title") or ""), rate)
            groups[key] = groups.get(key, ZERO) + Decimal(str(line.get("price") or 0))
    return groups


def buyer_vat_id(order: Order, store: StoreConfig) -> str | None:
    """The buyer's VAT number from the order's note attributes (store.buyer_vat_attributes)."""
    wanted = {_attribute_key(name) for name in store.buyer_vat_attributes}
    for name, value in (order.note_attributes or {}).items():
        if _attribute_key(name) in wanted and str(value or "").strip():
            return str(value).strip()[:40]
    return None


def _attribute_key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")
