"""Two concurrent verify batches on PostgreSQL never both reserve the last unit."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from tasks.store.db import make_engine, session_factory, session_scope
from tasks.store.migrate import ensure_schema
from tasks.store.models import Order, Product
from tasks.verify import verify
from tests.conftest import _truncate_all
from tests.factories import add_catalog, add_order


def test_last_unit_is_reserved_once_across_concurrent_batches(pg_url, runtime, now):
    engine = make_engine(pg_url)
    ensure_schema(engine)
    _truncate_all(engine)
    with session_scope(engine) as session:
        add_catalog(session, now)  # RING-1: 3 in stock
        first = add_order(session, now, lines=[("RING-1", 2, "900.00")], currency="EUR").id
        second = add_order(session, now, lines=[("RING-1", 2, "900.00")], currency="EUR").id

    holder = session_factory(engine)()
    holder.begin()
    verify(holder, [first], now, runtime)  # reserves 2 of 3, not committed yet
    other = threading.Thread(target=lambda: _verify_committed(engine, second, runtime, now))
    other.start()
    time.sleep(1.0)  # the second batch is now waiting for the product row lock
    assert other.is_alive()
    holder.commit()
    holder.close()
    other.join(timeout=30)

    with session_scope(engine) as session:
        states = dict(session.execute(select(Order.id, Order.state)).all())
        ring = session.scalars(select(Product).where(Product.sku == "RING-1")).one()
    assert states == {first: "verified", second: "on_hold"}
    assert (ring.stock, ring.reserved) == (3, 2)
    engine.dispose()


def _verify_committed(engine, order_id, runtime, now):
    with session_scope(engine) as session:
        verify(session, [order_id], now, runtime)
