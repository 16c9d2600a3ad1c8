"""Operators on the deployed stack: a held-order form answered through the API, and a daily run
that fans its sweep out over the workers as separate deployment runs."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
)
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run
from sqlalchemy import select

from tasks.store.db import session_scope
from tasks.store.models import Order, OrderEvent
from tests.factories import add_catalog, add_order
from tests.stack.test_deployments import RUN_TIMEOUT, final_state

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

AS_OF = datetime.fromisoformat("2026-11-18T10:00:00+00:00")


def held_order(engine) -> str:
    with session_scope(engine) as session:
        add_catalog(session, AS_OF)
        order = add_order(session, AS_OF, state="on_hold", step=None,
                          hold_reason="high_value: 1250.00 USD")
        return order.external_id


def wait_until_paused(flow_run_id, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run_id).state
            if state.is_paused():
                return
            assert not state.is_final(), f"the review run ended before pausing: {state!r}"
            time.sleep(1)
    pytest.fail(f"review run {flow_run_id} did not pause within {timeout:.0f}s")


def test_a_hold_decided_in_the_form_is_applied_by_the_worker(stack, app):
    external_id = held_order(app)
    run = run_deployment("review-holds/on-demand", timeout=0, parameters={
        "request": {"order_ids": [external_id], "timeout_minutes": 30}})
    wait_until_paused(run.id)

    resume_flow_run(run.id, run_input={
        "operator": "sam.ops", "order_1": {"decision": "release", "note": "verified by phone"}})

    assert final_state(run.id).is_completed()
    with session_scope(app) as session:
        order = session.scalars(select(Order).where(Order.external_id == external_id)).one()
        last = session.scalars(select(OrderEvent).where(OrderEvent.order_id == order.id)
                               .order_by(OrderEvent.id.desc())).first()
        assert order.state == "verified"
        assert (last.actor, last.detail["note"], last.to_state) == (
            "sam.ops", "verified by phone", "verified")


def test_the_daily_run_fans_its_sweep_out_as_shard_runs(stack, app):
    started = datetime.now().astimezone()
    parent = run_deployment("journey-daily/daily", timeout=RUN_TIMEOUT, parameters={
        "request": {"as_of": AS_OF.isoformat(), "shards": 2}})

    assert parent.state.is_completed(), parent.state
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["frequent"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)))
    shards = sorted((r.parameters["request"].get("shard"), r.parameters["request"].get("shards"),
                     r.state.type.value) for r in runs
                    if r.parameters.get("request", {}).get("shards") == 2)
    assert shards == [(0, 2, "COMPLETED"), (1, 2, "COMPLETED")]
