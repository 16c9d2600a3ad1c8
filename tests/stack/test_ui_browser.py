"""The Prefect UI in a real headless Chromium, as an operator sees the journeys stack.

The deployments page lists the journeys deployments, and a finished sweep's markdown summary
opens from its run page rendered as a heading and tables, not as raw markdown. Screenshots
land in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Page, expect
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.browser import failed_calls, screenshot

pytestmark = pytest.mark.slow

SWEEP_DEPLOYMENT = "journey-sweep/frequent"
SUMMARY_KEY = "journey-sweep-summary"
JOURNEY_FLOWS = ("order-journey", "journey-sweep", "journey-daily")
RUN_TIMEOUT_S = 120
# Prefect's UI asks for the task run of an artifact made outside any task with an empty id; the
# server answers 422 and the page renders all the same. Every other failed API call fails a test.
UI_QUIRKS = ('"id":{"any_":[""]}',)


@dataclass(frozen=True)
class SweepArtifact:
    """A finished sweep run and the summary it published: what the test looks for in the UI."""

    run_id: str
    run_name: str
    artifact_id: str
    markdown: str

    @property
    def heading(self) -> str:
        return self.markdown.splitlines()[0].removeprefix("# ")

    @property
    def first_column(self) -> str:
        table_row = next(line for line in self.markdown.splitlines() if line.startswith("|"))
        return table_row.strip("|").split("|")[0].strip()


@pytest.fixture(scope="module")
def finished_sweep(stack) -> SweepArtifact:
    """A sweep run through the stack's worker, so the UI has a finished run with artifacts."""
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        # _sync: Playwright's sync API keeps an event loop running in this thread, which would
        # make Prefect hand back a coroutine instead of running the call.
        run = run_deployment(SWEEP_DEPLOYMENT, parameters={}, timeout=RUN_TIMEOUT_S, _sync=True)
    state = run.state
    assert state is not None and state.is_completed(), (
        f"{SWEEP_DEPLOYMENT} run {run.name} did not complete within {RUN_TIMEOUT_S}s: "
        f"{state.type.value if state else 'no state'} {state.message if state else ''}")
    artifact = summary_artifact(stack.api_url, str(run.id))
    assert artifact["data"].startswith("# "), f"{SUMMARY_KEY} is not headed markdown: {artifact}"
    return SweepArtifact(str(run.id), run.name, artifact["id"], artifact["data"])


def summary_artifact(api_url: str, run_id: str) -> dict:
    """The run's summary artifact, straight from the REST API (every body field explicit)."""
    body = {"artifacts": {"key": {"any_": [SUMMARY_KEY]}, "flow_run_id": {"any_": [run_id]}},
            "limit": 1, "offset": 0, "sort": "CREATED_DESC"}
    response = httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    found = response.json()
    assert found, f"run {run_id} published no {SUMMARY_KEY} artifact"
    return found[0]


def test_deployments_page_lists_the_journeys(stack, page: Page) -> None:
    api_failures = failed_calls(page, stack.api_url, UI_QUIRKS)
    page.goto(stack.ui_url)  # the front door; it sends the browser on to the default UI
    page.get_by_role("link", name="Deployments", exact=True).click()
    # More deployments than the list's default page of 10: show them on one page, as an
    # operator would with "Items per page" (the UI keeps the choice in the address).
    expect(page).to_have_url(re.compile(r"/deployments\?.*\blimit=\d+"))
    page.goto(re.sub(r"\blimit=\d+", "limit=50", page.url))
    expect(page).to_have_url(re.compile(r"\blimit=50\b"))
    for flow_name in JOURNEY_FLOWS:
        expect(page.get_by_text(flow_name, exact=True).filter(visible=True).first).to_be_visible()
    expect(page.get_by_role("link", name="frequent", exact=True)).to_be_visible()
    screenshot(page, "ui-deployments")
    assert not api_failures, f"the UI's API calls failed: {api_failures}"


def test_sweep_summary_artifact_is_rendered(stack, ui_home: str, page: Page,
                                            finished_sweep: SweepArtifact) -> None:
    api_failures = failed_calls(page, stack.api_url, UI_QUIRKS)
    page.goto(f"{ui_home}/runs/flow-run/{finished_sweep.run_id}")
    expect(page.get_by_text(finished_sweep.run_name).first).to_be_visible()
    page.get_by_role("tab", name="Artifacts").click()
    page.locator(f"a[href$='/artifacts/key/{SUMMARY_KEY}']").first.click()
    page.get_by_role("link", name=finished_sweep.artifact_id[:8], exact=True).click()
    expect(page.get_by_role("heading", name=finished_sweep.heading)).to_be_visible()
    expect(page.get_by_role("columnheader", name=finished_sweep.first_column).first).to_be_visible()
    expect(page.get_by_role("link", name=finished_sweep.run_name)).to_be_visible()
    expect(page.get_by_text("|---").filter(visible=True)).to_have_count(0)  # rendered, not raw
    screenshot(page, "ui-sweep-summary-artifact")
    assert not api_failures, f"the UI's API calls failed: {api_failures}"
