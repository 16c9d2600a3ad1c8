"""Operator forms: a paused review run, resumed through the Prefect API with typed input."""

from __future__ import annotations

import json
import threading
import time

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from sqlalchemy import select

from flows.parameters import HoldReviewRequest
from tasks.store.db import session_scope
from tasks.store.models import Order, OrderEvent
from tests.factories import add_catalog, add_order

HOLD = "risk_flagged: tag fraud-suspected"


def held_orders(engine, now, how_many: int) -> list[str]:
    with session_scope(engine) as session:
        add_catalog(session, now)
        orders = [add_order(session, now, state="on_hold", step=None, hold_reason=HOLD)
                  for _ in range(how_many)]
        return [o.external_id for o in orders]


def start_in_thread(flow_fn, request) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=flow_fn(request)))
    thread.start()
    return thread, outcome


def paused_run_id(flow_name: str, timeout: float = 60):
    """The id of the flow's run once it is paused waiting for input."""
    paused = FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=paused, flow_filter=FlowFilter(
                name=FlowFilterName(any_=[flow_name])))
            if runs:
                return runs[0].id
            time.sleep(0.5)
    raise AssertionError(f"no paused {flow_name} run within {timeout} s")


def timeline(engine, external_id: str) -> list[OrderEvent]:
    with session_scope(engine) as session:
        order = session.scalars(select(Order).where(Order.external_id == external_id)).one()
        events = list(session.scalars(select(OrderEvent).where(OrderEvent.order_id == order.id)
                                      .order_by(OrderEvent.id)))
        session.expunge_all()
        return [order, *events]


def test_a_submitted_form_releases_and_cancels_held_orders(engine, flow_env, now):
    from flows.decisions import review_holds

    first, second, third = held_orders(engine, now, 3)
    thread, outcome = start_in_thread(review_holds, HoldReviewRequest(timeout_minutes=5))
    run_id = paused_run_id("review-holds")
    resume_flow_run(run_id, run_input={
        "operator": "ana.ops", "note": "called the customer",
        "order_1": "release", "order_2": "cancel",
    })  # order_3 left on its default: keep
    thread.join(timeout=120)

    assert outcome["result"] == {"orders": 3, "release": 1, "cancel": 1, "keep": 1}
    order, *events = timeline(engine, first)
    assert order.state == "verified"
    assert (events[-1].actor, events[-1].detail["note"]) == ("ana.ops", "called the customer")
    order, *events = timeline(engine, second)
    assert (order.state, events[-1].actor) == ("cancelled", "ana.ops")
    assert "called the customer" in order_reason(events[-1])
    order, *_ = timeline(engine, third)
    assert order.state == "on_hold"


def order_reason(event: OrderEvent) -> str:
    return f"{event.detail.get('reason')} {event.detail.get('note')}"


def form_input(run_id, key_part: str, timeout: float = 30) -> str:
    """The value of the paused run's form input whose key holds `key_part` (once saved)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = [i.value for i in client.filter_flow_run_input(run_id, "", 100, set())
                     if key_part in i.key]
            if found:
                return found[0]
            time.sleep(0.5)
    raise AssertionError(f"no form input {key_part!r} within {timeout} s")


def test_input_that_does_not_fit_is_refused_and_a_missing_name_asked_again(engine, flow_env,
                                                                           now):
    from flows.decisions import review_holds

    (external_id,) = held_orders(engine, now, 1)
    thread, outcome = start_in_thread(review_holds, HoldReviewRequest(timeout_minutes=5))
    run_id = paused_run_id("review-holds")
    with pytest.raises(Exception, match="(?i)valid|schema|reason"):
        resume_flow_run(run_id, run_input={"operator": "ana", "order_1": "ship"})
    resume_flow_run(run_id, run_input={"order_1": "release"})  # no name: nothing changes

    assert "the form needs your name" in form_input(run_id, "decisions-2-description")
    assert json.loads(form_input(run_id, "decisions-2-schema"))["properties"]["order_1"][
        "default"] == "release"  # the choice made is kept for the second submission
    assert timeline(engine, external_id)[0].state == "on_hold"
    resume_flow_run(paused_run_id("review-holds"), run_input={"operator": "ana"})
    thread.join(timeout=120)
    assert outcome["result"] == {"orders": 1, "release": 1, "cancel": 0, "keep": 0}


def test_an_unanswered_review_times_out_and_changes_nothing(engine, flow_env, now, monkeypatch):
    from flows import decisions

    monkeypatch.setattr(decisions, "SECONDS_PER_MINUTE", 2)
    (external_id,) = held_orders(engine, now, 1)
    state = decisions.review_holds(HoldReviewRequest(timeout_minutes=1), return_state=True)

    assert state.is_completed(), state  # the safe default is a normal outcome, not a failure
    assert state.result() == {"orders": 1, "expired": True}
    with get_client(sync_client=True) as client:  # and never Failed on the way (no alert)
        history = client.read_flow_run_states(state.state_details.flow_run_id)
    assert [s.type.value for s in history][-3:] == ["PAUSED", "RUNNING", "COMPLETED"]
    order, *events = timeline(engine, external_id)
    assert order.state == "on_hold"
    assert events[-1].kind == "review_expired" and "stays on hold" in events[-1].detail["note"]


def test_service_cases_are_settled_from_the_form_and_a_bad_amount_is_reported(engine, flow_env,
                                                                              now):
    from flows.decisions import review_cases
    from flows.parameters import CaseReviewRequest
    from tasks.store.models import ServiceCase
    from tests.unit.test_aftercare_service import order_with_case

    with session_scope(engine) as session:
        cases = [order_with_case(session, now)[1].id for _ in range(3)]
    thread, outcome = start_in_thread(review_cases, CaseReviewRequest(timeout_minutes=5))
    run_id = paused_run_id("review-cases")
    first, second, third = (f"case_{case_id}" for case_id in cases)
    resume_flow_run(run_id, run_input={
        "operator": "lee.ops",
        first: {"decision": "replacement", "note": "box crushed"},
        second: {"decision": "refund", "refund": "100000", "note": "too much"},
        third: {"decision": "keep"},
    })
    thread.join(timeout=120)

    result = outcome["result"]
    assert (result["decided"], result["keep"]) == (1, 1)
    assert len(result["refused"]) == 1 and f"case {cases[1]}" in result["refused"][0]
    with session_scope(engine) as session:
        statuses = [session.get(ServiceCase, case_id).status for case_id in cases]
        decided_by = session.get(ServiceCase, cases[0]).decided_by
    assert statuses == ["resolved", "open", "open"] and decided_by == "lee.ops"
