"""Reserved stock: the units verified orders hold, kept apart from the catalog's `stock`."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from tasks.store.models import Product


def move_reserved(
    session: Session, units: Counter[str], sign: int, now: datetime | None = None
) -> None:
    """Add (sign 1) or give back (sign -1) reserved units per SKU, one executemany; `now`, when
    given, stamps the products as updated."""
    if not units:
        return
    table = Product.__table__
    values = {"reserved": table.c.reserved + bindparam("b_qty")}
    statement = update(table).where(table.c.sku == bindparam("b_sku")).values(
        values | ({"updated_at": now} if now is not None else {}))
    session.connection().execute(statement, [{"b_sku": sku, "b_qty": sign * qty}
                                             for sku, qty in sorted(units.items())])
