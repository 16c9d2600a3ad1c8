"""The inbox drain without HTTP: ordering, last write wins, waiting, ignoring, retention."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from tasks import inbox
from tasks.store.db import make_engine, session_scope
from tasks.store.migrate import ensure_schema
from tasks.store.models import InboxDelivery, Order
from tests.conftest import FIXTURES

ORDER = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0])


def delivery(topic: str, delivery_id: str, body: dict | bytes) -> inbox.Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return inbox.Delivery("shopify", topic, delivery_id, raw)


def engines(tmp_path, engine):
    """The app database (SQLite or PostgreSQL) and a separate SQLite inbox beside it."""
    inbox_engine = make_engine(f"sqlite:///{tmp_path / 'inbox.db'}")
    InboxDelivery.__table__.create(inbox_engine, checkfirst=True)
    return inbox_engine, engine


def stored(inbox_engine, deliveries, now) -> None:
    with session_scope(inbox_engine) as session:
        inbox.store(session, deliveries, now)


def rows(inbox_engine) -> dict[str, InboxDelivery]:
    with session_scope(inbox_engine) as session:
        return {r.delivery_id: r for r in session.scalars(select(InboxDelivery))}


def test_the_newest_version_wins_whatever_order_the_deliveries_come_in(
        tmp_path, engine, runtime, now):
    inbox_engine, app = engines(tmp_path, engine)
    old = ORDER | {"updated_at": "2026-11-17T09:16:03-08:00", "financial_status": "pending"}
    new = ORDER | {"updated_at": "2026-11-17T10:00:00-08:00", "financial_status": "paid"}
    stored(inbox_engine, [delivery("orders/updated", "b", new)], now)  # the update comes first
    inbox.drain(inbox_engine, app, now, runtime)
    stored(inbox_engine, [delivery("orders/create", "a", old)], now)  # then the older create
    result = inbox.drain(inbox_engine, app, now, runtime)
    with session_scope(app) as session:
        order = session.scalars(select(Order)).one()
    assert order.financial_status == "paid"
    assert order.source_updated_at.isoformat() == "2026-11-17T18:00:00+00:00"
    late = rows(inbox_engine)["a"]
    assert (late.status, result.outcomes["processed"]) == ("processed", 1)
    assert late.reason.startswith("stale: updated_at 2026-11-17T09:16:03")


def test_two_versions_in_one_batch_store_the_newer(tmp_path, engine, runtime, now):
    inbox_engine, app = engines(tmp_path, engine)
    newer = ORDER | {"updated_at": "2026-11-17T10:00:00-08:00", "name": "#1001-B"}
    older = ORDER | {"updated_at": "2026-11-17T09:00:00-08:00", "name": "#1001-A"}
    stored(inbox_engine, [delivery("orders/updated", "n", newer),
                          delivery("orders/updated", "o", older)], now)
    inbox.drain(inbox_engine, app, now, runtime)
    with session_scope(app) as session:
        assert session.scalars(select(Order.name)).all() == ["#1001-B"]


def test_unknown_topics_and_broken_bodies_are_kept_with_a_reason(tmp_path, engine, runtime, now):
    inbox_engine, app = engines(tmp_path, engine)
    stored(inbox_engine, [delivery("app/uninstalled", "u", {"id": 1}),
                          delivery("orders/create", "x", b"{not json"),
                          delivery("customers/redact", "r", b"[1, 2]")], now)
    result = inbox.drain(inbox_engine, app, now, runtime)
    found = rows(inbox_engine)
    assert (found["u"].status, found["u"].reason) == ("ignored",
                                                      "topic app/uninstalled is not acted on")
    assert found["x"].status == "quarantined" and "not valid JSON" in found["x"].reason
    assert (found["r"].status, found["r"].reason) == ("ignored", "expected a JSON object")
    assert result.taken == 3 and sum(result.outcomes.values()) == 3


def test_settled_bodies_are_emptied_after_the_retention_period(tmp_path, engine, runtime, now):
    inbox_engine, app = engines(tmp_path, engine)
    stored(inbox_engine, [delivery("orders/create", "done", ORDER),
                          delivery("app/uninstalled", "later", {"id": 2})], now)
    inbox.drain(inbox_engine, app, now, runtime)
    stored(inbox_engine, [delivery("orders/create", "pending", ORDER | {"id": 99})],
           now + timedelta(days=40))
    with session_scope(inbox_engine) as session:
        assert inbox.purge_bodies(session, now + timedelta(days=29)) == 0
        assert inbox.purge_bodies(session, now + timedelta(days=31)) == 2
    found = rows(inbox_engine)
    assert found["done"].body == b"" and found["later"].body == b""
    assert found["pending"].body != b""  # not drained yet: never emptied


def test_a_file_of_bodies_goes_in_once(tmp_path, runtime, now):
    inbox_engine = make_engine(f"sqlite:///{tmp_path / 'inbox.db'}")
    InboxDelivery.__table__.create(inbox_engine)
    path = tmp_path / "orders.jsonl"
    path.write_text(json.dumps(ORDER) + "\n\n" + json.dumps(ORDER | {"id": 5}) + "\n")
    for _ in range(2):
        with session_scope(inbox_engine) as session:
            assert inbox.store_file(session, path, "shopify", "orders/paid", now) == 2
    assert sorted(r.topic for r in rows(inbox_engine).values()) == ["orders/paid"] * 2
    app = make_engine(f"sqlite:///{tmp_path / 'app.db'}")
    ensure_schema(app)
    assert inbox.drain(inbox_engine, app, now, runtime).intake["orders"].accepted == 2
