"""The simulation: a seeded store for three weeks through the real flows, with zero violations,
in a database of its own — never in the operator's store."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import func, select
from typer.testing import CliRunner

from flows.cli import app
from tasks.store.db import make_engine, session_scope
from tasks.store.models import LoyaltyEntry, Message, Order


def operators_store(tmp_path, monkeypatch):
    """What JOURNEYS_DATABASE_URL names: the store the simulation must leave alone."""
    from tasks.settings import get_settings

    store = tmp_path / "operators-store.db"
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", f"sqlite:///{store}")
    get_settings.cache_clear()
    return store


def test_three_weeks_of_a_store_break_no_rule(engine, db_url, flow_env, tmp_path, monkeypatch):
    """SQLite: the default, a new database under var/simulation; PostgreSQL: an empty database
    named with --database."""
    monkeypatch.chdir(tmp_path)
    store = operators_store(tmp_path, monkeypatch)
    on_postgres = engine.dialect.name == "postgresql"
    default_db = f"sqlite:///{tmp_path / 'var' / 'simulation' / 'simulation.db'}"
    result = CliRunner().invoke(app, ["simulate", "--days", "21", "--orders", "40", "--seed", "3",
                                      "--start", "2026-11-02T17:00:00+00:00", "--json",
                                      *(["--database", db_url] if on_postgres else [])])
    assert result.exit_code == 0, (result.stdout[-2000:], result.stderr[-2000:])
    report = json.loads(result.stdout)
    assert report["database"] == (db_url if on_postgres else default_db)
    assert "is not touched" in result.stderr.splitlines()[0]
    assert not store.exists()  # not even migrated
    assert report["violations"] == []
    simulated = engine if on_postgres else make_engine(default_db)
    with session_scope(simulated) as session:
        by_state = select(Order.state, func.count()).group_by(Order.state)
        states = dict(session.execute(by_state).all())
        templates = set(session.scalars(select(Message.template).where(
            Message.status == "sent")))
        approved = session.scalar(select(func.coalesce(func.sum(LoyaltyEntry.points), 0))
                                  .where(LoyaltyEntry.status == "approved"))
    assert states == report["orders_by_state"] and states.get("delivered", 0) > 20
    # Customers returned and exchanged through the page's own function; parcels came back.
    returns = report["returns"]
    assert returns["opened"] >= 3 and returns["refunded"] + returns["exchanged"] >= 1
    assert "return_update" in templates
    assert {"confirmation", "shipped", "delivered", "feedback_request",
            "review_request"} <= templates
    assert approved == 0  # the 30-day return window has not closed after 21 days
    assert report["calendar"] and report["peak_memory_mb"] > 0
    with session_scope(simulated) as session:
        # an original order (a replacement from an exchange earns no points: it cost nothing)
        order = session.scalars(select(Order).where(
            Order.state == "delivered", Order.replaces_order_id.is_(None)).order_by(Order.id)
        ).first()
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", report["database"])
    from tasks.settings import get_settings

    get_settings.cache_clear()
    view = json.loads(CliRunner().invoke(app, ["order", order.external_id, "--json"]).stdout)
    assert view["shipments"][0]["status"] == "Delivered"
    assert view["loyalty"][0]["kind"] == "earn" and view["loyalty"][0]["status"] == "pending"


def test_simulate_refuses_a_store_and_a_folder_it_did_not_make(tmp_path, monkeypatch):
    """Each refusal is one line, before anything is written or a Prefect server started."""
    from infra.tooling.demo_data import demo_catalog
    from tasks.intake import ingest_products
    from tasks.intake.formats import products_from_shopify
    from tasks.store.migrate import ensure_schema

    monkeypatch.chdir(tmp_path)
    operators_store(tmp_path, monkeypatch)
    shop = make_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    ensure_schema(shop)
    products = [p for c in demo_catalog(1) for p in products_from_shopify(c, json.dumps(c), "t")]
    with session_scope(shop) as session:
        ingest_products(session, products, datetime(2026, 11, 2, tzinfo=UTC))
    runner = CliRunner()

    def refused(*args: str) -> str:
        result = runner.invoke(app, ["simulate", "--days", "1", *args])
        assert result.exit_code == 2 and result.stdout == "", result.stdout
        [line] = result.stderr.splitlines()
        return line

    assert refused("--database", f"sqlite:///{tmp_path / 'shop.db'}") == (
        f"journeys: sqlite:///{tmp_path / 'shop.db'} already holds a store (0 orders, "
        f"{len(products)} products); the simulation writes into it only with --reuse")
    assert refused("--reuse") == ("journeys: --reuse needs --database: the default database "
                                  "is always new")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    assert refused("--workdir", "notes") == ("journeys: notes is not empty and not a simulation "
                                             "folder; give an empty or new --workdir")
    assert (notes / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "operators-store.db").exists()


def test_simulated_days_are_reproducible():
    from infra.tooling.simulation import Outside, _scans

    world = Outside(seed=5)
    shipped = datetime(2026, 11, 2, 17, tzinfo=UTC)
    day = datetime(2026, 11, 5, 17, tzinfo=UTC)
    assert _scans("1Z1", shipped, None, day, world) == _scans("1Z1", shipped, None, day, world)
