"""Two sweeps at once over the same due orders: each order is processed once, mailed once;
a third sweep of the same day afterwards changes nothing.

Two separate processes, as two workers would be, each running the journey-sweep flow against
the same app database and the same Prefect server. The third sweep runs the same flow in the
test process (a process start costs ~25 s on a loaded 2-core machine, the no-op sweep ~2 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from prefect.settings import PREFECT_API_URL
from sqlalchemy import func, select

from flows.parameters import SweepRequest
from tasks.store.db import session_scope
from tasks.store.models import Artifact, LoyaltyEntry, Message, Order, OrderEvent, Step
from tests.conftest import ROOT
from tests.factories import seed_demo_store

ORDERS = 400
BATCH = 25


def seed_store(engine, now, tmp_path) -> None:
    seed_demo_store(engine, now, tmp_path, ORDERS, 11)


def start_sweep(db_url: str, archive: str, now) -> subprocess.Popen:
    env = {**os.environ, "JOURNEYS_DATABASE_URL": db_url, "JOURNEYS_BATCH_SIZE": str(BATCH),
           "JOURNEYS_ARTIFACTS_URL": f"file://{archive}", "JOURNEYS_MAIL_TRANSPORT": "file",
           "JOURNEYS_SECRET_KEY": "test-secret", "JOURNEYS_CONFIG_DIR": str(ROOT / "configs"),
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--json", "--as-of",
                             now.isoformat()], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen) -> tuple[dict, int]:
    """The sweep's JSON report and how often its log says "database is locked"."""
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out), err.count("database is locked")


def store_picture(engine) -> Counter:
    """Every row a sweep can add or change: counts per table, plus order, step, mail states."""
    picture: Counter = Counter()
    with session_scope(engine) as session:
        for model in (Message, OrderEvent, LoyaltyEntry, Artifact, Step):
            picture[model.__tablename__] = session.scalar(select(func.count()).select_from(model))
        picture.update(session.execute(select(Order.state)).scalars())
        picture.update(session.execute(select(Step.name, Step.status, Step.attempts)).all())
        picture.update(session.execute(select(Message.status, Message.attempts)).all())
    return picture


def changed(before: Counter, after: Counter) -> int:
    """Rows added, removed or in another state (an order that moved counts in both states)."""
    return sum(((after - before) + (before - after)).values())


def test_two_concurrent_sweeps_process_every_order_exactly_once(engine, db_url, flow_env, now,
                                                                 tmp_path, figure):
    seed_store(engine, now, tmp_path)
    sweeps = [start_sweep(db_url, str(tmp_path / "artifacts"), now) for _ in range(2)]
    reports, locked = zip(*(finish(p) for p in sweeps), strict=True)

    with session_scope(engine) as session:
        changes = Counter(session.execute(
            select(OrderEvent.order_id, OrderEvent.to_state).where(OrderEvent.kind == "state")))
        confirmed = session.scalar(select(func.count()).where(Order.state == "confirmed"))
        mails = Counter(session.scalars(select(Message.order_id).where(
            Message.template == "confirmation", Message.status == "sent")))
    advanced = {stage: sum(r["stages"][stage]["advanced"] for r in reports)
                for stage in ("verify", "pack", "confirm")}
    assert confirmed > ORDERS // 2
    assert max(changes.values()) == 1  # no order moved into the same state twice
    assert advanced["confirm"] == confirmed == len(mails)  # each confirmed by exactly one run
    assert max(mails.values()) == 1  # and mailed exactly once
    assert all(r["manifest"]["unexplained"] == 0 for r in reports)
    assert sum(locked) == 0

    before = store_picture(engine)
    rerun = flow_env.sweep(SweepRequest(as_of=now, batch_size=BATCH))
    rerun_advanced = sum(s["advanced"] for s in rerun["stages"].values())
    rerun_changed = changed(before, store_picture(engine))

    assert rerun_advanced == 0
    assert rerun["messages"].get("sent", 0) == 0
    assert rerun_changed == 0
    by_run = [r["stages"]["confirm"]["advanced"] for r in reports]
    figure(f"two concurrent sweeps ({engine.dialect.name}): {ORDERS} orders, confirmed "
           f"{confirmed} (by run {by_run}), each confirmed once (duplicate state changes "
           f"{sum(n - 1 for n in changes.values())}), duplicate mails "
           f"{sum(n - 1 for n in mails.values())}, 'database is locked' {sum(locked)}; "
           f"same-day rerun advanced {rerun_advanced}, changed {rerun_changed} rows")
