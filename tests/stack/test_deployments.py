"""The deployments on a real server: schedules, limits, typed forms, and runs on a worker."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import httpx
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from sqlalchemy import select

from flows import parameters as forms
from flows.moderation import ModerationRequest
from infra.stack import PREFECT_FILE, apply_deployment, deploy
from infra.tooling.demo_data import demo_catalog
from tasks.intake import ingest_orders, ingest_products, read_orders, read_products
from tasks.store.db import make_engine, session_scope
from tasks.store.models import Order
from tests.conftest import FIXTURES

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

AS_OF = "2026-11-18T10:00:00+00:00"
RUN_TIMEOUT = 240
DEPLOYMENTS = {  # name → (entrypoint, request model)
    "journey-sweep/frequent": ("flows.journey.sweep", forms.SweepRequest),
    "journey-daily/daily": ("flows.journey.daily", forms.DailyRequest),
    "order-journey/advance-one-order": ("flows.journey.order_journey",
                                        forms.OrderJourneyRequest),
    "ingest/from-file-or-upload": ("flows.intake.ingest", forms.IngestRequest),
    "quarantine-release/by-entry-id": ("flows.operations.release_quarantine",
                                       forms.QuarantineReleaseRequest),
    "quarantine-review/release-fix-or-dismiss": ("flows.operations.review_quarantine",
                                                 forms.QuarantineReviewRequest),
    "erase-customer/by-order": ("flows.operations.erase_customer", forms.ErasureRequest),
    "cancel-order/not-yet-shipped": ("flows.operations.cancel_order", forms.CancelOrderRequest),
    "review-holds/decide-held-orders": ("flows.decisions.review_holds", forms.HoldReviewRequest),
    "review-cases/decide-service-cases": ("flows.decisions.review_cases",
                                          forms.CaseReviewRequest),
    "find-order/by-number-name-or-email": ("flows.find_order.find_order",
                                           forms.FindOrderRequest),
    "returns-review/decide-requested-returns": ("flows.decisions.review_returns",
                                                forms.ReturnReviewRequest),
    "review-moderation/approve-or-reject-reviews": ("flows.moderation.moderate_reviews",
                                                    ModerationRequest),
}


def read_deployment(name: str):
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def schedules_of(deployment) -> list[tuple]:
    return sorted((s.slug, getattr(s.schedule, "cron", None),
                   getattr(s.schedule, "interval", None), s.schedule.timezone, s.active)
                  for s in deployment.schedules)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_each_deployment_runs_on_the_pool_with_an_enforced_typed_request(stack, name):
    entrypoint, model = DEPLOYMENTS[name]
    deployment = read_deployment(name)

    assert (deployment.entrypoint, deployment.work_pool_name) == (entrypoint, "journeys")
    assert deployment.enforce_parameter_schema
    assert "journeys" in deployment.tags and len(deployment.description) > 80
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "{{ $JOURNEYS_HOME }}"}}]
    schema = deployment.parameter_openapi_schema
    assert list(schema["properties"]) == ["request"]
    assert schema["definitions"][model.__name__]["properties"].keys() == model.model_fields.keys()


def test_the_run_form_shows_the_request_titles_and_descriptions(stack):
    schema = read_deployment("order-journey/advance-one-order").parameter_openapi_schema
    order_id = schema["definitions"]["OrderJourneyRequest"]["properties"]["order_id"]
    field = forms.OrderJourneyRequest.model_fields["order_id"]

    assert (order_id["title"], order_id["description"]) == (field.title, field.description)
    assert schema["required"] == ["request"]


def test_schedules_run_in_store_time_and_the_daily_run_never_overlaps(stack):
    sweep, daily = read_deployment("journey-sweep/frequent"), read_deployment("journey-daily/daily")
    holds = read_deployment("review-holds/decide-held-orders")

    assert schedules_of(sweep) == [("every-5-minutes", None, timedelta(seconds=300), "UTC", True)]
    assert schedules_of(daily) == [("daily-0600-store-time", "0 6 * * *", None,
                                    "America/Los_Angeles", True)]
    assert schedules_of(holds) == [("daily-0900-store-time", "0 9 * * *", None,
                                    "America/Los_Angeles", True)]
    assert daily.global_concurrency_limit.limit == 1
    assert daily.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert sweep.global_concurrency_limit is None  # the daily run fans out into parallel sweeps


def final_state(flow_run_id, timeout: float = RUN_TIMEOUT):
    """Poll until the run is final (prefect.flow_runs.wait_for_flow_run is async-only)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run_id).state
            if state.is_final():
                return state
            time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} not final within {timeout:.0f}s: {state!r}")


def test_a_daily_run_that_would_overlap_another_is_cancelled(stack):
    # A business date long before the fixture orders: the run finds nothing due and changes nothing.
    request = {"request": {"as_of": "2020-01-06T14:00:00+00:00"}}
    runs = [run_deployment("journey-daily/daily", parameters=request, timeout=0) for _ in "ab"]

    states = sorted(final_state(run.id).type.value for run in runs)
    assert states == ["CANCELLED", "COMPLETED"]


def test_deploying_again_keeps_a_schedule_an_operator_paused(stack):
    daily = read_deployment("journey-daily/daily")
    (schedule,) = daily.schedules
    with get_client(sync_client=True) as client:
        client.update_deployment_schedule(daily.id, schedule.id, active=False)
    try:
        deploy(stack.api_url, report=lambda line: None)
        assert [s.active for s in read_deployment("journey-daily/daily").schedules] == [False]
    finally:
        with get_client(sync_client=True) as client:
            again = read_deployment("journey-daily/daily")
            client.update_deployment_schedule(again.id, again.schedules[0].id, active=True)


def test_deploying_again_changes_nothing_and_retires_an_old_name(stack):
    before = {name: read_deployment(name) for name in stack.local.deployments}
    config = yaml.safe_load(PREFECT_FILE.read_text())
    (spec,) = [s for s in config["deployments"]
               if s["entrypoint"] == "flows.journey.order_journey"]
    with get_client(sync_client=True) as client:  # as an earlier version deployed it
        apply_deployment(client, {**spec, "name": "on-demand"}, config["pull"])

    lines: list[str] = []
    assert deploy(stack.api_url, report=lines.append) == stack.local.deployments
    assert ("deployment order-journey/on-demand: removed (now order-journey/advance-one-order)"
            in lines)
    with pytest.raises(ObjectNotFound):
        read_deployment("order-journey/on-demand")
    for name, old in before.items():
        new = read_deployment(name)
        assert (new.id, schedules_of(new)) == (old.id, schedules_of(old))
        assert new.parameter_openapi_schema == old.parameter_openapi_schema


def flow_run_count(deployment_id) -> int:
    deployments = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    with get_client(sync_client=True) as client:
        # sort and limit spelled out: fastapi >= 0.151 refuses the client's JSON nulls (422)
        runs = client.read_flow_runs(deployment_filter=deployments, sort=FlowRunSort.ID_DESC,
                                     limit=200)
    return len(runs)


@pytest.mark.parametrize("parameters", [
    {"request": {"order_id": ""}},
    {"request": {"order_id": "5432100001", "colour": "red"}},
    {"request": {"order_id": "5" * 101}},
    {"request": {"as_of": "2026-11-18T10:00:00+00:00"}},
    {},
], ids=["empty-order", "unknown-field", "too-long", "no-order", "no-request"])
def test_a_request_that_does_not_fit_is_refused_before_any_run(stack, parameters):
    deployment = read_deployment("order-journey/advance-one-order")
    before = flow_run_count(deployment.id)

    with pytest.raises(PrefectHTTPStatusError) as refused:
        run_deployment("order-journey/advance-one-order", parameters=parameters, timeout=0)

    assert refused.value.response.status_code == 409
    assert "Validation failed" in refused.value.response.text
    assert flow_run_count(deployment.id) == before


@pytest.fixture(scope="module")
def shop(stack, tmp_path_factory):
    """The demo catalog and the three Shopify fixture orders, loaded into the app database."""
    engine = make_engine(stack.app_db_url)
    catalog = tmp_path_factory.mktemp("shop") / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(p) + "\n" for p in demo_catalog(7)))
    as_of = datetime.fromisoformat(AS_OF)
    with session_scope(engine) as session:
        ingest_products(session, list(read_products(catalog)), as_of)
    with session_scope(engine) as session:
        ingest_orders(session, list(read_orders(FIXTURES / "orders_shopify.jsonl")), as_of)
    yield engine
    engine.dispose()


def order_states(engine) -> dict[str, str]:
    with session_scope(engine) as session:
        return dict(session.execute(select(Order.external_id, Order.state)).all())


def finished(flow_run):
    """The run, after asserting it completed (its state message says why not)."""
    assert flow_run.state.is_completed(), f"{flow_run.name}: {flow_run.state!r}"
    return flow_run


def artifacts_of(api_url: str, flow_run_id) -> list[dict]:
    """POST /artifacts/filter with only the filter that matters.

    Not `client.read_artifacts`: it sends JSON nulls for the filters it was not given, which
    fastapi >= 0.151 refuses (422); and an empty TaskRunFilter keeps only task-run artifacts.
    """
    body = {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}, "limit": 50}
    response = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def test_order_journey_on_a_worker_confirms_the_order_and_publishes_artifacts(stack, shop):
    started = time.monotonic()
    run = finished(run_deployment("order-journey/advance-one-order", timeout=RUN_TIMEOUT,
                                  parameters={"request": {"order_id": "5432100002",
                                                          "as_of": AS_OF}}))
    print(f"order-journey run took {time.monotonic() - started:.1f}s from request to Completed")

    assert order_states(shop)["5432100002"] == "confirmed"
    artifacts = artifacts_of(stack.api_url, run.id)
    assert artifacts and all(a["flow_run_id"] == str(run.id) for a in artifacts)
    assert any((a["key"] or "").startswith("order-") for a in artifacts)


def test_ingest_on_a_worker_reads_a_file_on_its_machine_or_one_pasted_into_the_form(stack, shop):
    pasted = (FIXTURES / "orders_canonical.jsonl").read_text()
    runs = [run_deployment("ingest/from-file-or-upload", timeout=0, parameters={  # side by side
        "request": {"kind": "orders", **given, "as_of": AS_OF}})
        for given in ({"source": str(FIXTURES / "orders.csv")}, {"text": pasted})]

    assert [final_state(run.id).type.value for run in runs] == ["COMPLETED", "COMPLETED"]
    assert {"7001", "7002", "MP-77001", "CN-2001"} <= set(order_states(shop))
    with get_client(sync_client=True) as client:  # Prefect keeps no copy of the pasted file
        kept = client.read_flow_run(runs[1].id).parameters["request"]["text"]
    assert kept.startswith("(removed once read: ") and "schmidt" not in kept.lower()


def test_an_extra_worker_joins_the_pool(stack):
    stack.add_worker()
    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            workers = client.read_workers_for_work_pool("journeys", limit=10, offset=0)
            if sum(w.status == "ONLINE" for w in workers) >= 2:
                return
            time.sleep(1)
    pytest.fail(f"a second worker did not come online: {[(w.name, w.status) for w in workers]}")
