"""The simulation: a seeded store for three weeks through the real flows, with zero violations."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import func, select
from typer.testing import CliRunner

from flows.cli import app
from tasks.store.db import session_scope
from tasks.store.models import LoyaltyEntry, Message, Order


def test_three_weeks_of_a_store_break_no_rule(engine, flow_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the simulation writes its daily files under ./var/sim
    result = CliRunner().invoke(app, ["simulate", "--days", "21", "--orders", "40", "--seed", "3",
                                      "--start", "2026-11-02T17:00:00+00:00", "--json"])
    assert result.exit_code == 0, (result.stdout[-2000:], result.stderr[-2000:])
    report = json.loads(result.stdout)
    assert report["violations"] == []
    with session_scope(engine) as session:
        by_state = select(Order.state, func.count()).group_by(Order.state)
        states = dict(session.execute(by_state).all())
        templates = set(session.scalars(select(Message.template).where(
            Message.status == "sent")))
        approved = session.scalar(select(func.coalesce(func.sum(LoyaltyEntry.points), 0))
                                  .where(LoyaltyEntry.status == "approved"))
    assert states.get("delivered", 0) > 20
    # Customers returned and exchanged through the page's own function; parcels came back.
    returns = report["returns"]
    assert returns["opened"] >= 3 and returns["refunded"] + returns["exchanged"] >= 1
    assert "return_update" in templates
    assert {"confirmation", "shipped", "delivered", "feedback_request",
            "review_request"} <= templates
    assert approved == 0  # the 30-day return window has not closed after 21 days
    assert report["calendar"]
    with session_scope(engine) as session:
        # an original order (a replacement from an exchange earns no points: it cost nothing)
        order = session.scalars(select(Order).where(
            Order.state == "delivered", Order.replaces_order_id.is_(None)).order_by(Order.id)
        ).first()
    view = json.loads(CliRunner().invoke(app, ["order", order.external_id, "--json"]).stdout)
    assert view["shipments"][0]["status"] == "Delivered"
    assert view["loyalty"][0]["kind"] == "earn" and view["loyalty"][0]["status"] == "pending"


def test_simulated_days_are_reproducible():
    from infra.tooling.simulation import Outside, _scans

    world = Outside(seed=5)
    shipped = datetime(2026, 11, 2, 17, tzinfo=UTC)
    day = datetime(2026, 11, 5, 17, tzinfo=UTC)
    assert _scans("1Z1", shipped, None, day, world) == _scans("1Z1", shipped, None, day, world)
