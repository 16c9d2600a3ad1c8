"""Operators on the deployed stack: a held-order form and the quarantine form answered through the
API, and a daily run that fans its sweep out over the workers as separate deployment runs."""

from __future__ import annotations

import json
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

from tasks.intake import Rejected
from tasks.intake.ingest import quarantine_records
from tasks.store.db import session_scope
from tasks.store.models import Order, OrderEvent, Quarantine
from tests.conftest import FIXTURES
from tests.factories import add_catalog, add_order
from tests.stack.test_deployments import RUN_TIMEOUT, artifacts_of, final_state

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
    run = run_deployment("review-holds/decide-held-orders", timeout=0, parameters={
        "request": {"order_ids": [external_id], "timeout_minutes": 30}})
    wait_until_paused(run.id)

    resume_flow_run(run.id, run_input={
        "operator": "sam.ops", "note": "verified by phone", "order_1": "release"})

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


def quarantined_orders(engine) -> tuple[int, int, int]:
    """Three refused Shopify orders: one with a negative price (to fix), one to dismiss, one
    whose refusal no longer holds (to release)."""
    first, second, third = (json.loads(line) for line in
                            (FIXTURES / "orders_shopify.jsonl").read_text().splitlines())
    first["line_items"][0]["price"] = "-98.00"  # ids of their own: other tests ingest these
    records = [(first | {"id": 8800000001}, "line_items[0].price: must not be negative"),
               (second | {"id": 8800000002}, "a test order"),
               (third | {"id": 8800000003}, "the product was not in the catalog yet")]
    rejected = [Rejected("order", "shopify", json.dumps(record), [{"field": "_record",
                                                                   "reason": why}],
                         f"operator-form.jsonl:line {n}", str(record["id"]))
                for n, (record, why) in enumerate(records, start=1)]
    with session_scope(engine) as session:
        quarantine_records(session, rejected, AS_OF)
        return tuple(session.scalars(select(Quarantine.id).where(
            Quarantine.origin.like("operator-form.jsonl:%")).order_by(Quarantine.origin)))


def form_schema(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        (schema,) = [i.value for i in client.filter_flow_run_input(flow_run_id, "", 100, set())
                     if i.key.endswith("-schema")]
    return json.loads(schema)


def test_the_quarantine_form_fixes_dismisses_and_releases_and_shows_no_customer(stack, app):
    fix, dismiss, release = quarantined_orders(app)
    run = run_deployment("quarantine-review/release-fix-or-dismiss", timeout=0, parameters={
        "request": {"entry_ids": [fix, dismiss, release], "timeout_minutes": 30}})
    wait_until_paused(run.id)
    fields = form_schema(run.id)["properties"]
    shown = json.loads(fields[f"entry_{fix}_record"]["default"])  # as the form shows it
    shown["line_items"][0]["price"] = "98.00"

    resume_flow_run(run.id, run_input={
        "operator": "quinn.ops",
        f"entry_{fix}": "fix", f"entry_{fix}_record": json.dumps(shown, indent=2),
        f"entry_{dismiss}": "dismiss", f"entry_{dismiss}_reason": "a test order",
        f"entry_{release}": "release"})

    assert final_state(run.id).is_completed()
    with session_scope(app) as session:
        statuses = [session.get(Quarantine, i).status for i in (fix, dismiss, release)]
        fixed = session.scalars(select(Order).where(Order.external_id == "8800000001")).one()
        assert (fixed.email, fixed.lines[0].unit_price) == ("ava.nguyen@example.com", 98)
        assert session.scalars(select(Order.id).where(Order.external_id == "8800000003")).one()
    assert statuses == ["released", "dismissed", "released"]
    artifacts = {a["key"]: a["data"] for a in artifacts_of(stack.api_url, run.id)}
    rows = artifacts["quarantine-review"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert {row["entry"]: row["outcome"] for row in rows} == {
        fix: "released", dismiss: "dismissed", release: "released"}
    # What Prefect keeps (the form, the artifacts) never names the customers.
    kept = json.dumps([fields, artifacts["quarantine"]]).lower()
    assert f"## entry {fix}" in kept and "@example.com" in kept
    assert not [n for n in ("nguyen", "walsh", "martin", "ava.nguyen@", "oliver.walsh@")
                if n in kept]
