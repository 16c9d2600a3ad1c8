"""An operator decides a held order in the Prefect UI's resume form, in a real Chromium.

The review-holds run pauses with a typed form (flows/decisions.py); the test opens the paused
run's page and resumes it through the UI's dialog, first without a name (the run comes back
to the form saying so, nothing changed), then properly; and checks that the worker applied
exactly what was chosen: the order is released and its timeline names the operator and note.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import select

from tasks.store.db import session_scope
from tasks.store.models import Order, OrderEvent
from tests.browser import failed_calls, screenshot
from tests.factories import add_order

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DEPLOYMENT = "review-holds/decide-held-orders"
RUN_TIMEOUT_S = 120
OPERATOR = "robin.ops"
NOTE = "customer confirmed by phone"


def held_order(engine) -> tuple[str, str]:
    """A held order of its own (fresh customer, a SKU no catalog has: release reserves nothing)."""
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        order = add_order(session, now, lines=[(f"UI-FORM-{tag}", 1, "1245.00")],
                          state="on_hold", step=None, hold_reason="high_value: 1250.00 USD",
                          external_id=f"ui-form-{tag}", name=f"#UI-{tag}",
                          email=f"ui-form-{tag}@example.com")
        return order.external_id, order.name


def flow_run_state(api_url: str, run_id: str) -> dict:
    response = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=30)
    response.raise_for_status()
    return response.json()["state"]


def wait_for_state(api_url: str, run_id: str, wanted: str, timeout: float = RUN_TIMEOUT_S
                   ) -> dict:
    """Poll the REST API until the run's state type is `wanted` (a final other state fails)."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = flow_run_state(api_url, run_id)
        if state["type"] == wanted:
            return state
        assert state["type"] not in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, (
            f"run {run_id} ended as {state['type']} ({state.get('message')}), not {wanted}")
        time.sleep(0.5)
    pytest.fail(f"run {run_id} was not {wanted} within {timeout:.0f}s: {state}")


def wait_for_pause(api_url: str, run_id: str, pause_key: str,
                   timeout: float = RUN_TIMEOUT_S) -> None:
    """Until the run is paused again with the form of `pause_key` (a form asked again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = flow_run_state(api_url, run_id)
        if state["type"] == "PAUSED" and state["state_details"].get("pause_key") == pause_key:
            return
        time.sleep(0.5)
    pytest.fail(f"run {run_id} was not asking with form {pause_key} within {timeout:.0f}s")


def resume_dialog(page: Page, ui_home: str, run) -> Locator:
    page.goto(f"{ui_home}/runs/flow-run/{run.id}")
    expect(page.get_by_text(run.name).first).to_be_visible()
    expect(page.get_by_text("Paused").first).to_be_visible()
    page.get_by_role("button", name="Open menu").click()
    page.get_by_role("menuitem", name="Resume").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name="Resume Flow Run")).to_be_visible()
    return dialog


def test_an_operator_releases_a_held_order_in_the_resume_form(stack, app, ui_home, page: Page):
    external_id, order_name = held_order(app)
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        run = run_deployment(DEPLOYMENT, timeout=0, _sync=True, parameters={
            "request": {"order_ids": [external_id], "timeout_minutes": 30}})
    run_id = str(run.id)
    wait_for_state(stack.api_url, run_id, "PAUSED")
    api_failures = failed_calls(page, stack.api_url)

    # Without a name nothing is decided: the run asks again, saying why.
    dialog = resume_dialog(page, ui_home, run)
    dialog.get_by_role("button", name="Resume", exact=True).click()
    expect(page.get_by_text("Flow run resumed")).to_be_visible()
    wait_for_pause(stack.api_url, run_id, "decisions-2")
    dialog = resume_dialog(page, ui_home, run)
    expect(dialog.get_by_text("Nothing was changed: the form needs your name.")).to_be_visible()
    screenshot(page, "ui-form-missing-name")

    dialog.get_by_label("Your name").fill(OPERATOR)
    # One select per order, titled with its number, total and age; context below it.
    decision = dialog.get_by_role("button", name=re.compile(re.escape(f"Order {order_name} ·")))
    expect(decision).to_have_text("keep")  # the form's default: leave the order on hold
    expect(dialog.get_by_text("1,250.00 USD").first).to_be_visible()
    expect(dialog.get_by_text("held: high_value: 1250.00 USD").first).to_be_visible()
    decision.click()
    page.get_by_role("option", name="release", exact=True).click()
    expect(decision).to_have_text("release")
    dialog.get_by_label("Note").fill(NOTE)
    screenshot(page, "ui-form-before-submit")

    dialog.get_by_role("button", name="Resume", exact=True).click()
    expect(page.get_by_text("Flow run resumed")).to_be_visible()
    expect(dialog).to_be_hidden()

    wait_for_state(stack.api_url, run_id, "COMPLETED")
    page.reload()
    expect(page.get_by_text(run.name).first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()
    expect(page.get_by_text("Finished in state Completed")).to_be_visible()
    screenshot(page, "ui-form-run-completed")
    assert not api_failures, f"the UI's API calls failed: {api_failures}"

    with session_scope(app) as session:
        held = session.scalars(select(Order).where(Order.external_id == external_id)).one()
        last = session.scalars(select(OrderEvent).where(OrderEvent.order_id == held.id)
                               .order_by(OrderEvent.id.desc())).first()
        assert held.state == "verified"
        assert (last.actor, last.detail["note"], last.detail["decision"], last.to_state) == (
            OPERATOR, NOTE, "release", "verified")
