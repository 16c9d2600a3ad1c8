"""`journeys erase --email` end to end: the real CLI process, twice, over a store the real flows
built (orders confirmed and mailed, parcels delivered, points earned, documents bundled).

tests/unit/test_privacy.py covers the erasure's parts; this checks the operator's command as
shipped: the address is gone from every table and every archived object, a keyed-hash
suppression stays, the ledger balances, and a second run changes nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from flows.parameters import IngestRequest, SweepRequest
from infra.tooling.demo_data import demo_catalog, demo_orders
from tasks.messaging.governor import email_hmac
from tasks.store.db import session_scope
from tasks.store.models import Base, LoyaltyEntry, Order, Suppression
from tests.conftest import ROOT

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

EMAIL = "Ludmila.Quartermaine@erase-probe.example"  # as the shop sent it; stored lower-case
NAME = ("Ludmila", "Quartermaine")
SECRET = "erase-cli-secret-5c1e"
HERS = 3  # her orders: the first three of six


def store_orders(now) -> list[dict[str, Any]]:
    """Six paid orders (seed 11: no edge cases); the first three are hers."""
    orders = demo_orders(6, 11, now)
    for n, order in enumerate(orders):
        who = {"email": EMAIL, "first_name": NAME[0], "last_name": NAME[1], "id": 7_200_000} if (
            n < HERS) else {"email": f"other{n}@erase-probe.example", "id": 7_200_000 + n}
        order["email"] = who["email"]
        order["customer"] |= who
        if n < HERS:
            order["shipping_address"] |= {"first_name": NAME[0], "last_name": NAME[1],
                                          "name": " ".join(NAME)}
        order["financial_status"] = "paid"
    return orders


def parcels(orders, now) -> tuple[list[dict], list[dict]]:
    """One shipment per order and a Delivered scan for it."""
    shipments, events = [], []
    for n, order in enumerate(orders):
        number = f"1ZERASE{n:011d}"
        shipments.append({"order_source": "shopify", "order_external_id": str(order["id"]),
                          "carrier": "UPS", "tracking_number": number, "tracking_url": None,
                          "shipped_at": (now + timedelta(hours=2)).isoformat(),
                          "line_items": [{"sku": li["sku"], "title": li["title"],
                                          "quantity": li["quantity"]}
                                         for li in order["line_items"]]})
        events.append({"event_id": f"erase-evt-{n}", "tracking_number": number, "carrier": "ups",
                       "tag": "Delivered", "occurred_at": (now + timedelta(days=1)).isoformat(),
                       "message": f"Delivered to {NAME[1].upper() if n < HERS else 'porch'}",
                       "location": "Portland, OR"})
    return shipments, events


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def build_store(flow_env, now, tmp_path) -> list[dict[str, Any]]:
    from flows.intake import ingest

    orders = store_orders(now)
    shipments, events = parcels(orders, now)
    for kind, records, at in (("products", demo_catalog(11), now), ("orders", orders, now),
                              ("shipments", shipments, now + timedelta(hours=3)),
                              ("events", events, now + timedelta(days=1, hours=1))):
        if kind == "shipments":
            flow_env.sweep(SweepRequest(as_of=now))  # confirmed, documents and mail archived
        ingest(IngestRequest(kind=kind, source=write_jsonl(tmp_path / f"{kind}.jsonl", records),
                             as_of=at))
    flow_env.sweep(SweepRequest(as_of=now + timedelta(days=1, hours=2)))  # delivered, points
    return orders


# --- reading everything back -----------------------------------------------------------------


def every_text(engine) -> dict[str, str]:
    """'table.column' → all its text/JSON values as one string, for every table."""
    found: dict[str, list[str]] = {}
    with session_scope(engine) as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).mappings():
                for column, value in row.items():
                    if isinstance(value, str | dict | list):
                        found.setdefault(f"{table.name}.{column}", []).append(
                            value if isinstance(value, str) else json.dumps(value))
    return {where: "\n".join(values) for where, values in found.items()}


def archive_texts(root: Path) -> dict[str, str]:
    """Every archived object (every member of every .zip bundle) as text."""
    texts = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".zip":
            with zipfile.ZipFile(io.BytesIO(data)) as bundle:
                texts |= {f"{path.name}#{n}": bundle.read(n).decode("utf-8", "replace")
                          for n in bundle.namelist()}
        else:
            texts[str(path.relative_to(root))] = data.decode("utf-8", "replace")
    return texts


def traces(texts: dict[str, str], needles: list[str]) -> list[str]:
    return [f"{where}: {n}" for where, text in texts.items() for n in needles
            if n.lower() in text.lower()]


def ledger(engine) -> dict[int, tuple[int, int]]:
    """customer → (sum of points, entries)."""
    with session_scope(engine) as session:
        rows = session.execute(select(LoyaltyEntry.customer_id, func.sum(LoyaltyEntry.points),
                                      func.count()).group_by(LoyaltyEntry.customer_id))
        return {customer: (int(total), count) for customer, total, count in rows}


def snapshot(engine, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    return every_text(engine), archive_texts(root)


def journeys_erase(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "flows.cli", "erase", "--email", f" {EMAIL} ",
                           "--by", "dpo@erase-probe", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def cli_env(flow_env, db_url, tmp_path, monkeypatch) -> dict[str, str]:
    """The same database, archive and key for the flows here and the CLI process."""
    from tasks.settings import get_settings

    monkeypatch.setenv("JOURNEYS_SECRET_KEY", SECRET)
    for cached in (get_settings, flow_env.runtime, flow_env.app_engine):
        cached.cache_clear()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOURNEYS_", "PREFECT_API"))}
    return env | {"JOURNEYS_DATABASE_URL": db_url, "JOURNEYS_SECRET_KEY": SECRET,
                  "JOURNEYS_ARTIFACTS_URL": f"file://{tmp_path / 'artifacts'}",
                  "JOURNEYS_MAIL_TRANSPORT": "file",
                  "JOURNEYS_CONFIG_DIR": str(ROOT / "configs")}


def test_journeys_erase_forgets_the_address_everywhere_and_twice_is_a_no_op(
        engine, flow_env, cli_env, now, tmp_path, figure):
    orders = build_store(flow_env, now, tmp_path)
    root = tmp_path / "artifacts"
    needles = [EMAIL, *NAME]
    before_tables, before_archive = snapshot(engine, root)
    books = ledger(engine)
    with session_scope(engine) as session:
        her_id = session.scalar(select(Order.customer_id).where(Order.email == EMAIL.lower()))
        states = dict(session.execute(select(Order.external_id, Order.state)).all())

    first = journeys_erase(cli_env)
    after_tables, after_archive = snapshot(engine, root)
    second = journeys_erase(cli_env)
    again_tables, again_archive = snapshot(engine, root)

    # The store was real: her orders delivered, points earned, her papers in shared bundles.
    assert {states[str(o["id"])] for o in orders[:HERS]} <= {"delivered", "feedback_requested"}
    assert books[her_id][1] >= HERS
    assert traces(before_tables, [EMAIL]) and traces(before_archive, needles)  # seen before
    assert (first["customers"], first["orders"], first["already_erased"]) == (1, HERS, False)
    assert first["archive_rewritten"] >= 1
    # Gone from every table and every archived object; never mailed again; books unchanged.
    assert traces(after_tables, needles) == [] and traces(after_archive, needles) == []
    with session_scope(engine) as session:
        reasons = set(session.scalars(select(Suppression.reason).where(
            Suppression.email_hmac == email_hmac(EMAIL.lower(), SECRET))))
        plain = session.scalar(select(func.count()).select_from(Suppression)
                               .where(Suppression.email_hash.is_not(None)))
    assert reasons == {"erasure"} and plain == 0
    assert ledger(engine) == books
    # The second run is a no-op, byte for byte.
    assert second == {**{k: 0 for k in first if k != "already_erased"}, "already_erased": True}
    changed = [w for w in again_tables if again_tables[w] != after_tables.get(w)]
    changed += [w for w in again_archive.keys() ^ after_archive.keys()]
    changed += [w for w in again_archive if again_archive[w] != after_archive.get(w)]
    assert changed == []

    figure(f"erase: 1 customer, {first['orders']} orders, {first['messages']} messages, "
           f"{first['archive_rewritten']} bundles rewritten via `journeys erase`; address and "
           f"name found afterwards 0 (in {len(after_tables)} table columns + "
           f"{len(after_archive)} archived objects); ledger balanced "
           f"({sum(t for t, _ in books.values())} points over {len(books)} customers, unchanged);"
           f" second run changed {len(changed)}")
