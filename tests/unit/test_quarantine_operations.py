"""The quarantine worked without the CLI: records shown masked, fixed (ingested, or quarantined
again with the new reasons, never lost) or dismissed; and what the held-orders form shows."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from flows.decisions import age_text, hold_item
from tasks import operations
from tasks.intake import ingest_orders, read_orders
from tasks.intake.masking import EditRefused, mask_record, unmask
from tasks.store.db import session_scope
from tasks.store.models import Order, Quarantine
from tests.conftest import FIXTURES
from tests.factories import add_customer, add_order

SHOPIFY = FIXTURES / "orders_shopify.jsonl"


def shopify_order() -> str:
    return SHOPIFY.read_text(encoding="utf-8").splitlines()[0]


def test_a_shown_record_hides_the_customer_and_is_made_whole_from_an_edit():
    raw = shopify_order()
    shown = mask_record(raw)

    for personal in ("Nguyen", "Ava.Nguyen@", "Alder", "97205"):
        assert personal.lower() not in shown.lower(), personal
    record = json.loads(shown)
    assert (record["name"], record["email"], record["line_items"][0]["sku"]) == (
        "#1001", "•••@Example.com", "NW-APP-001-M")
    assert record["shipping_address"]["last_name"] == "N•••••"
    assert unmask(shown, raw) == raw  # nothing edited: the record exactly as received

    record["line_items"][0]["price"] = "90.00"
    whole = json.loads(unmask(json.dumps(record, indent=2), raw))
    expected = json.loads(raw)
    expected["line_items"][0]["price"] = "90.00"
    assert whole == expected  # the edit, and every masked value back as it was

    record["shipping_address"]["last_name"] = "Nx•••••"
    with pytest.raises(EditRefused, match="changed only in part"):
        unmask(json.dumps(record), raw)
    with pytest.raises(EditRefused, match="not valid JSON"):
        unmask(shown[:-2], raw)


def test_a_csv_record_is_masked_by_column_and_restored_by_row():
    header, row = (FIXTURES / "orders.csv").read_text().splitlines()[:2]
    raw = f"{header}\n{row}"
    shown = mask_record(raw, "csv")

    assert "Okafor" not in shown and "Maya.Okafor@" not in shown and "Smart Speaker" in shown
    assert unmask(shown.replace(",99.00", ",89.00"), raw, "csv") == raw.replace(",99.00",
                                                                                  ",89.00")


@pytest.fixture
def quarantined(sqlite_engine, tmp_path, now):
    """One Shopify order refused for a negative price; returns its quarantine entry id."""
    record = json.loads(shopify_order())
    record["line_items"][0]["price"] = "-98.00"
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with session_scope(sqlite_engine) as session:
        assert ingest_orders(session, read_orders(path), now).quarantined == 1
        return session.scalar(select(Quarantine.id))


def edit_price(session, entry_id: int, price: str) -> str:
    """The entry as the form shows it, with the first line's price typed over."""
    entry = session.get(Quarantine, entry_id)
    record = json.loads(mask_record(entry.payload, entry.source))
    record["line_items"][0]["price"] = price
    return json.dumps(record, indent=2)


def test_a_fix_still_refused_stays_quarantined_as_a_new_entry_then_a_good_one_is_ingested(
        sqlite_engine, runtime, now, quarantined):
    with session_scope(sqlite_engine) as session:
        refused = operations.fix_quarantine(session, quarantined,
                                            edit_price(session, quarantined, "-1.00"), now,
                                            runtime, "sam.ops", masked=True).outcome
    assert refused["status"] == "still_rejected" and refused["replaced_by"] != quarantined
    assert "greater than or equal to 0" in refused["reasons"][0]["reason"]
    with session_scope(sqlite_engine) as session:
        old, new = (session.get(Quarantine, i) for i in (quarantined, refused["replaced_by"]))
        assert (old.status, new.status) == ("replaced", "open")
        assert "corrected by sam.ops" in old.reasons[-1]["reason"]
        assert json.loads(old.payload)["line_items"][0]["price"] == "-98.00"  # kept as received
        corrected = json.loads(new.payload)
        assert corrected["line_items"][0]["price"] == "-1.00"
        assert corrected["email"] == "Ava.Nguyen@Example.com"  # unmasked, not the bullets
        again = operations.fix_quarantine(session, quarantined, "{}", now, runtime, "sam.ops")
        assert again.outcome["status"] == "already_replaced"

    new_id = refused["replaced_by"]
    with session_scope(sqlite_engine) as session:
        fixed = operations.fix_quarantine(session, new_id, edit_price(session, new_id, "98.00"),
                                          now, runtime, "sam.ops", masked=True).outcome
    assert fixed["status"] == "released"
    with session_scope(sqlite_engine) as session:
        order = session.scalars(select(Order).where(Order.external_id == "5432100001")).one()
        assert (order.email, session.get(Quarantine, new_id).status) == (
            "ava.nguyen@example.com", "released")


def test_a_dismissal_needs_a_reason_and_keeps_who_and_why(sqlite_engine, now, quarantined):
    with session_scope(sqlite_engine) as session, pytest.raises(
            operations.OperationRefused, match="say why"):
        operations.dismiss_quarantine(session, quarantined, "  ", now, "sam.ops")
    with session_scope(sqlite_engine) as session:
        done = operations.dismiss_quarantine(session, quarantined, "a test order", now, "sam.ops")
        twice = operations.dismiss_quarantine(session, quarantined, "again", now, "sam.ops")
        entry = session.get(Quarantine, quarantined)
        assert (done.outcome["status"], twice.outcome["status"], entry.status) == (
            "dismissed", "already_dismissed", "dismissed")
        assert entry.reasons[-1] == {"field": "_dismissed",
                                     "reason": "dismissed by sam.ops: a test order"}
        released = operations.release_quarantine(session, quarantined, now, None)
        assert released.outcome["status"] == "already_dismissed"  # dismissed stays dismissed


@pytest.fixture
def cli_store(tmp_path, monkeypatch, now):
    """A SQLite store the CLI points at, with one refused order (negative price)."""
    from flows import common
    from tasks.settings import get_settings
    from tasks.store.db import make_engine
    from tasks.store.migrate import ensure_schema
    from tests.conftest import ROOT

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    for name, value in (("DATABASE_URL", url), ("SECRET_KEY", "test-secret"),
                        ("CONFIG_DIR", str(ROOT / "configs")), ("MAIL_TRANSPORT", "file"),
                        ("ARTIFACTS_URL", f"file://{tmp_path / 'artifacts'}")):
        monkeypatch.setenv(f"JOURNEYS_{name}", value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    caches = (get_settings, common.runtime, common.app_engine)
    for cached in caches:
        cached.cache_clear()
    engine = make_engine(url)
    ensure_schema(engine)
    yield engine
    engine.dispose()
    for cached in caches:
        cached.cache_clear()


def test_the_cli_fixes_and_dismisses_with_one_line_each(cli_store, tmp_path, now):
    from typer.testing import CliRunner

    from flows.cli import app

    record = json.loads(shopify_order())
    record["line_items"][0]["price"] = "-98.00"
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n")
    with session_scope(cli_store) as session:
        ingest_orders(session, read_orders(tmp_path / "bad.jsonl"), now)
        entry_id = session.scalar(select(Quarantine.id))
    record["line_items"][0]["price"] = "-2.00"
    (tmp_path / "fixed.jsonl").write_text(json.dumps(record) + "\n")
    runner = CliRunner()

    refused = runner.invoke(app, ["quarantine", "fix", str(entry_id), "--record",
                                  str(tmp_path / "fixed.jsonl"), "--by", "ana"])
    assert refused.exit_code == 2
    moved = re.search(rf"quarantine entry {entry_id} still rejected \(now quarantine entry "
                      r"(\d+)\): line_items\[0\]\.price: ", refused.stderr)
    assert moved, refused.stderr
    new_id = int(moved.group(1))
    dismissed = runner.invoke(app, ["quarantine", "dismiss", str(new_id), "--reason",
                                    "a test order", "--by", "ana"])
    assert (dismissed.exit_code, dismissed.stdout.strip()) == (
        0, f"quarantine entry {new_id}: dismissed")
    blank = runner.invoke(app, ["quarantine", "dismiss", str(entry_id), "--reason", " "])
    assert blank.exit_code == 2 and "say why" in blank.stderr


def test_a_held_order_in_the_form_shows_who_what_how_long_and_how_much(sqlite_engine, now):
    lines = [("MUG-1", 2, "14.50"), ("TEE-1", 1, "1221.00"), ("CAP-1", 1, "5.00"),
             ("SOCK-1", 3, "2.00")]
    with session_scope(sqlite_engine) as session:
        customer = add_customer(session, now, "zenobia.vantongeren@shop.example",
                                first_name="Zenobia", orders_count=4)
        order = add_order(session, now, lines, state="on_hold", step=None, customer=customer,
                          email=customer.email, name="#4711", placed_at=now - timedelta(days=3,
                                                                                         hours=2),
                          hold_reason="high_value: 1,266.00 USD (limit 1,000.00)")
        item = hold_item(order, 7, now)

    assert item.field == "order_7" and item.id == order.id
    assert item.label == "Order #4711 · 1,266.00 USD · 3 days"
    assert item.detail == ("Customer Z•••••• L••••••• (•••@shop.example, 4 orders) · "
                           "2 × MUG-1, 1 × TEE-1, 1 × CAP-1 and 1 more · "
                           "held: high_value: 1,266.00 USD (limit 1,000.00)")
    assert "zenobia" not in item.detail.lower() and "lovelace" not in item.detail.lower()


@pytest.mark.parametrize(("age", "text"), [
    (timedelta(days=1, hours=23), "1 day"), (timedelta(hours=5, minutes=59), "5 hours"),
    (timedelta(minutes=1), "1 minute"), (timedelta(seconds=30), "just now"),
    (timedelta(seconds=-5), "just now")])
def test_ages_read_in_the_largest_whole_unit(age, text):
    assert age_text(age) == text
