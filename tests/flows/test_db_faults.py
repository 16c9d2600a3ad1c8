"""The database connection dies mid-batch: the batch rolls back whole, and the retry finishes it.

The fault is real: when a stage batch is about to write its timeline rows (after it already
wrote messages or artifacts and moved orders), an admin connection kills that batch's server
process with pg_terminate_backend, and the stage's next statement meets a dead connection.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from flows.parameters import SweepRequest
from tasks.confirm import confirm
from tasks.pack import pack
from tasks.store.db import normalise_url, session_scope
from tasks.store.journal import due_order_ids
from tasks.store.models import Artifact, Message, Order, OrderEvent, Step
from tasks.verify import verify
from tests.factories import seed_demo_store

ORDERS = 40
BATCH = 20
# stage → (a statement the batch runs first, the statement it is killed at)
FAULTS = {"pack": ("INSERT INTO artifacts", "INSERT INTO order_events"),
          "confirm": ("INSERT INTO messages", "INSERT INTO order_events")}
pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


class BackendKiller:
    """Once: when a transaction on `engine` that ran `after` is about to run `at`, terminate
    its server process from an admin connection and wait until it is gone."""

    def __init__(self, engine, after: str, at: str) -> None:
        self.engine, self.after, self.at = engine, after, at
        self.admin = create_engine(normalise_url(engine.url.render_as_string(False)),
                                   isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.kills, self.writes_before_kill = 0, 0
        self._seen_after, self._writes = False, 0
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "before_cursor_execute", self._before)

    def _begin(self, _conn) -> None:
        self._seen_after, self._writes = False, 0

    def _before(self, conn, _cursor, statement, *_args) -> None:
        self._seen_after = self._seen_after or statement.startswith(self.after)
        if self._seen_after and statement.startswith(self.at) and not self.kills:
            self.kill(conn.connection.dbapi_connection.info.backend_pid)
            self.writes_before_kill = self._writes
        if statement.startswith(("INSERT", "UPDATE")):
            self._writes += 1

    def kill(self, pid: int) -> None:
        with self.admin.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            while admin.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                {"p": pid}).scalar():
                time.sleep(0.01)
        self.kills += 1

    def remove(self) -> None:
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "before_cursor_execute", self._before)
        self.admin.dispose()


def seed_store(engine, now, tmp_path) -> None:
    seed_demo_store(engine, now, tmp_path, ORDERS, 5)


def run_stage(engine, stage, now, rt) -> tuple[list[int], int]:
    """Every due order of `stage` in one batch; (the batch, how many advanced)."""
    with session_scope(engine) as session:
        ids = due_order_ids(session, stage.__name__, now, 1000)
    with session_scope(engine) as session:
        return ids, stage(session, ids, now, rt).advanced


def snapshot(engine) -> dict:
    """Everything a stage batch writes: row counts, order states, step statuses and attempts."""
    with session_scope(engine) as session:
        counts = {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                  for model in (Message, Artifact, OrderEvent, Step)}
        states = Counter(session.scalars(select(Order.state)))
        steps = Counter(session.execute(select(Step.name, Step.status, Step.attempts)))
    return {"counts": counts, "states": states, "steps": steps}


def changed_rows(before: dict, after: dict) -> int:
    """Rows added plus orders and steps in another state or attempt count than before."""
    added = sum(after["counts"][t] - before["counts"][t] for t in before["counts"])
    moved = sum((after["states"] - before["states"]).values())
    stepped = sum((after["steps"] - before["steps"]).values())
    return added + moved + stepped


@pytest.mark.parametrize("stage", ["pack", "confirm"])
def test_killed_connection_rolls_the_stage_batch_back_whole(engine, runtime, now, tmp_path,
                                                            stage, figure):
    seed_store(engine, now, tmp_path)
    stages = {"pack": [verify], "confirm": [verify, pack]}[stage]
    for earlier in stages:
        run_stage(engine, earlier, now, runtime)
    before = snapshot(engine)
    killer = BackendKiller(engine, *FAULTS[stage])
    try:
        with pytest.raises(OperationalError) as failure:
            run_stage(engine, {"pack": pack, "confirm": confirm}[stage], now, runtime)
    finally:
        killer.remove()
    assert failure.value.connection_invalidated  # SQLAlchemy saw the connection die
    partial = changed_rows(before, snapshot(engine))
    batch, advanced = run_stage(engine, {"pack": pack, "confirm": confirm}[stage], now, runtime)
    again = run_stage(engine, {"pack": pack, "confirm": confirm}[stage], now, runtime)

    assert killer.kills == 1 and killer.writes_before_kill >= 2
    assert partial == 0
    assert advanced == len(batch) > 0
    assert again == ([], 0)
    figure(f"pg_terminate_backend mid-batch ({stage}, stage level): killed after "
           f"{killer.writes_before_kill} write statements, batch rolled back whole "
           f"({partial} partial rows), rerun advanced {advanced}/{len(batch)}, a third run 0")


def test_sweep_retries_a_batch_whose_connection_was_killed(engine, flow_env, now, tmp_path,
                                                           figure):
    seed_store(engine, now, tmp_path)
    killer = BackendKiller(flow_env.app_engine(), *FAULTS["confirm"])
    try:
        state = flow_env.sweep(SweepRequest(as_of=now, batch_size=BATCH), return_state=True)
    finally:
        killer.remove()
    report = state.result()
    retried = confirm_batch_runs(state.state_details.flow_run_id)
    with session_scope(engine) as session:
        passed_verify = session.scalar(select(func.count()).select_from(Step).where(
            Step.name == "confirm"))
        confirmed = session.scalar(select(func.count()).where(Order.state == "confirmed"))
        events = Counter(session.scalars(select(OrderEvent.order_id).where(
            OrderEvent.kind == "state", OrderEvent.to_state == "confirmed")))
        mails = Counter(session.scalars(select(Message.order_id).where(
            Message.template == "confirmation", Message.status == "sent")))
    duplicates = sum(n - 1 for n in events.values()) + sum(n - 1 for n in mails.values())

    assert state.is_completed() and killer.kills == 1
    assert retried == {"confirm-batch-1": 2, "confirm-batch-2": 1}  # killed once, then retried
    assert report["stages"]["confirm"]["advanced"] == confirmed == passed_verify > BATCH
    assert len(events) == len(mails) == confirmed and duplicates == 0
    assert report["manifest"]["unexplained"] == 0
    figure(f"pg_terminate_backend mid-batch (confirm, journey-sweep under Prefect): task "
           f"confirm-batch-1 ran {retried['confirm-batch-1']} times, confirmed "
           f"{confirmed}/{passed_verify} packed, mailed {len(mails)}, duplicates {duplicates}")


def confirm_batch_runs(flow_run_id) -> dict[str, int]:
    """{task run name: run count} of the flow run's confirm batches, from the Prefect server."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.run_count for r in runs
            if r.name.startswith("confirm-batch") and r.state and r.state.is_completed()}
