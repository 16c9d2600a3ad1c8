"""A worker that dies mid-run: its run is marked Crashed by the lost-runs automation, and
running the deployment again finishes the work without doing anything twice.

The run under test hangs inside the confirm stage (JOURNEYS_FAULT, tasks/faults.py), with
verify and pack committed and the confirm batch's transaction open. Then its worker and the
flow-run process are SIGKILLed, as a machine that dies would leave them: nothing reports
Crashed, the run's heartbeats just stop.

The test has its own work pool, worker and app database, so killing them leaves the stack's
worker and the other stack tests' orders alone: the deployment is journey-sweep's, from
infra/prefect.yaml, on that pool and without a schedule.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker
from sqlalchemy import func, select

from infra.bootstrap import (
    HEARTBEAT_ENV,
    HEARTBEAT_SECONDS,
    ensure_automation,
    lost_runs_automation,
    with_heartbeat,
)
from infra.stack import PREFECT, PREFECT_FILE, ROOT, _descendants, _reap, apply_deployment
from tasks.store.db import make_engine, session_scope
from tasks.store.models import Message, Order, OrderEvent, RunManifest
from tests.factories import seed_demo_store
from tests.stack.conftest import migrated, scratch_database, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POOL = "journeys-worker-death"
DEPLOYMENT = "journey-sweep/worker-death"
ORDERS = 12
AS_OF = "2026-11-18T18:00:00+00:00"  # 10:00 in the store's time zone: no quiet hours
HANG = "stage:confirm:before_commit:hang"
# Heartbeats come every HEARTBEAT_SECONDS (30, Prefect's minimum); production waits three beats
# (LOST_AFTER, 90 s). The test waits one and a half, to stay short.
LOST_AFTER = timedelta(seconds=45)


@pytest.fixture
def short_lost_runs_window(stack) -> Iterator[timedelta]:
    """The lost-runs automation with a shorter window; bootstrap's own is put back after."""
    with get_client(sync_client=True) as client:
        ensure_automation(client, lost_runs_automation(within=LOST_AFTER))
    yield LOST_AFTER
    with get_client(sync_client=True) as client:
        ensure_automation(client, lost_runs_automation())


@pytest.fixture
def own_pool(stack, tmp_path) -> Iterator[SimpleNamespace]:
    """A process pool, journey-sweep deployed on it, an app database with due orders."""
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(
            name=POOL, type="process",
            base_job_template=with_heartbeat(ProcessWorker.get_default_base_job_template())))
        config = yaml.safe_load(PREFECT_FILE.read_text())
        (spec,) = [s for s in config["deployments"] if s["entrypoint"] == "flows.journey.sweep"]
        spec = {**spec, "name": "worker-death", "schedules": [],
                "work_pool": {"name": POOL, "job_variables": {}}}
        assert apply_deployment(client, spec, config["pull"]) == DEPLOYMENT
    try:
        with scratch_database("journeys_death") as app_db:
            engine = make_engine(migrated(app_db))
            seed_orders(engine, tmp_path)
            archive = tmp_path / "archive"
            env = stack.local.worker_env() | worker_env(app_db, archive)
            yield SimpleNamespace(engine=engine, env=env, log_dir=stack.log_dir)
            engine.dispose()
    finally:
        with get_client(sync_client=True) as client:
            with contextlib.suppress(ObjectNotFound):
                client.delete_deployment(client.read_deployment_by_name(DEPLOYMENT).id)
            with contextlib.suppress(ObjectNotFound):
                client.delete_work_pool(POOL)


def seed_orders(engine, tmp_path) -> None:
    seed_demo_store(engine, datetime.fromisoformat(AS_OF), tmp_path, ORDERS, 23)


class Worker:
    """`prefect worker start --pool journeys-worker-death`, in its own session, killable."""

    def __init__(self, env: dict[str, str], log_dir):
        self.env, self.log = env, open(log_dir / "worker-death.log", "ab")  # noqa: SIM115
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", POOL, "--name", "worker-death"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def kill_with_its_runs(self) -> int:
        """SIGKILL the worker's process group and every process below it; how many died."""
        below = _descendants(self.process.pid)
        os.killpg(self.process.pid, signal.SIGKILL)
        for pid, _ in below:  # flow runs lead their own sessions: the group signal misses them
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive_pid(pid) for pid, _ in below) and time.monotonic() < deadline:
            time.sleep(0.1)
        return 1 + len(below)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            _reap(self.process, 20)
        self.log.close()


def _alive_pid(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def worker(own_pool) -> Iterator[Worker]:
    worker = Worker(own_pool.env, own_pool.log_dir)
    worker.start()
    yield worker
    worker.stop()


def task_runs(api_url: str, flow_run_id) -> dict[str, str]:
    """Task run name → state type (POST /task_runs/filter, no JSON nulls: see test_deployments)."""
    body = {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}, "limit": 200}
    response = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=10)
    response.raise_for_status()
    return {run["name"]: (run["state_type"] or "") for run in response.json()}


def wait_for(what: str, check, timeout: float, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(poll)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def flow_run_state(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def store_picture(engine) -> SimpleNamespace:
    with session_scope(engine) as session:
        states = Counter(session.scalars(select(Order.state)))
        confirmations = list(session.execute(select(
            Message.order_id, Message.effect_key, Message.message_id, Message.status,
            Message.attempts).where(Message.template == "confirmation")))
        confirmed_events = Counter(session.scalars(select(OrderEvent.order_id).where(
            OrderEvent.kind == "state", OrderEvent.to_state == "confirmed")))
        manifests = {m.run_id: m for m in session.scalars(select(RunManifest))}
        messages = session.scalar(select(func.count()).select_from(Message))
    return SimpleNamespace(states=states, confirmations=confirmations, messages=messages,
                           confirmed_events=confirmed_events, manifests=manifests)


def test_a_run_whose_worker_dies_is_marked_crashed_and_a_rerun_finishes_it_once(
        stack, own_pool, worker, short_lost_runs_window, figure):
    assert own_pool.env[HEARTBEAT_ENV] == str(HEARTBEAT_SECONDS)  # what `journeys server` sets
    request = {"request": {"as_of": AS_OF}}
    started = time.monotonic()
    doomed = run_deployment(DEPLOYMENT, parameters=request, timeout=0,
                            job_variables={"env": {"JOURNEYS_FAULT": HANG}})
    wait_for("the run hangs in confirm", lambda: task_runs(stack.api_url, doomed.id).get(
        "confirm-batch-1") == "RUNNING", timeout=120)
    time.sleep(2)  # from the task's Running state to the fault point: a few milliseconds
    assert flow_run_state(doomed.id).is_running()

    killed = worker.kill_with_its_runs()
    killed_at = time.monotonic()
    print(f"\nworker death: {killed_at - started:.0f}s from request to the hang in confirm")
    at_crash = store_picture(own_pool.engine)
    packed = at_crash.states["packed"]

    crashed = wait_for("the lost run is marked Crashed", lambda: (
        state := flow_run_state(doomed.id)).is_final() and state,
        timeout=LOST_AFTER.total_seconds() + HEARTBEAT_SECONDS + 30)
    detected_after = time.monotonic() - killed_at
    worker.start()  # the machine is back
    rerun = run_deployment(DEPLOYMENT, parameters=request, timeout=240)
    after = store_picture(own_pool.engine)
    print(f"worker death: Crashed after {detected_after:.0f}s, rerun took "
          f"{time.monotonic() - killed_at - detected_after:.0f}s")

    assert killed >= 2  # the worker and at least the flow-run process
    assert packed > 0 and at_crash.states["confirmed"] == 0  # the hung batch was never committed
    assert not at_crash.confirmations and not at_crash.confirmed_events
    assert crashed.is_crashed(), crashed
    assert "No heartbeat" in (crashed.message or "")
    assert detected_after <= LOST_AFTER.total_seconds() + 15
    assert rerun.state.is_completed(), rerun.state
    assert after.states["confirmed"] == packed and after.states["packed"] == 0
    assert after.confirmed_events == Counter({order: 1 for order in after.confirmed_events})
    assert len(after.confirmed_events) == packed
    mails = Counter(order for order, *_ in after.confirmations)
    assert len(mails) == packed and set(mails.values()) == {1}
    assert {status for *_, status, _ in after.confirmations} == {"sent"}
    assert {attempts for *_, attempts in after.confirmations} == {1}
    effect_keys = Counter(key for _, key, *_ in after.confirmations)
    message_ids = Counter(mid for _, _, mid, *_ in after.confirmations)
    assert max(effect_keys.values()) == max(message_ids.values()) == 1
    assert str(doomed.id) not in after.manifests  # the lost run never closed its books
    books = after.manifests[str(rerun.id)]
    assert books.balanced and books.counts.get("unexplained") == 0

    figure(f"worker killed mid-run (SIGKILL, {killed} processes, hung in confirm before commit): "
           f"detected Crashed after {detected_after:.0f} s (heartbeat {HEARTBEAT_SECONDS} s, "
           f"window {LOST_AFTER.total_seconds():.0f} s); rerun completed; orders confirmed "
           f"{after.states['confirmed']}/{packed}, confirmation mails {len(after.confirmations)}, "
           f"duplicate mails {sum(n - 1 for n in mails.values())}, duplicate effect keys "
           f"{sum(n - 1 for n in effect_keys.values())}, rerun manifest unexplained "
           f"{books.counts.get('unexplained')}")
