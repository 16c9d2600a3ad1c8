"""Bootstrap on a real server: twice is once, an operator's edit survives, alerts are delivered."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from prefect import get_client
from prefect.blocks.system import Secret
from prefect.client.schemas.actions import VariableUpdate, WorkPoolUpdate
from prefect.deployments import run_deployment
from prefect.events import Event
from prefect.events.clients import PrefectEventsClient
from prefect.events.schemas.automations import Posture

from infra.bootstrap import (
    ALERT_URL_ENV,
    HEARTBEAT_ENV,
    LOST_AFTER,
    LOST_RUNS_AUTOMATION,
    MAIL_LIMIT,
    ORDER_HELD_AUTOMATION,
    ORDERS_NOT_SHIPPED_AUTOMATION,
    RUN_FAILED_AUTOMATION,
    VARIABLES,
    WEBHOOKS_REFUSED_AUTOMATION,
    WEBHOOKS_STOPPED_AUTOMATION,
    WORK_POOL,
    bootstrap,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SECRET_VALUES = {"JOURNEYS_SECRET_KEY": "s3cret-hmac-key", "JOURNEYS_SMTP_PASSWORD": "s3cret-smtp"}


@pytest.fixture
def webhook() -> Iterator[SimpleNamespace]:
    """A loopback HTTP endpoint that keeps the JSON bodies POSTed to it."""
    received: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.put(json.loads(body or b"null"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/alerts", received=received)
    server.shutdown()
    server.server_close()


@pytest.fixture
def alert_env(webhook, monkeypatch):
    monkeypatch.setenv(ALERT_URL_ENV, webhook.url)
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    return webhook


def bootstrapped_objects() -> dict[str, int]:
    """How many of each bootstrap object the server holds, by name."""
    with get_client(sync_client=True) as client:
        counts = {name: int(client.read_variable_by_name(name) is not None) for name in VARIABLES}
        counts[MAIL_LIMIT] = int(client.read_global_concurrency_limit_by_name(MAIL_LIMIT).limit)
        for name in (RUN_FAILED_AUTOMATION, ORDER_HELD_AUTOMATION, LOST_RUNS_AUTOMATION,
                     WEBHOOKS_STOPPED_AUTOMATION, WEBHOOKS_REFUSED_AUTOMATION,
                     ORDERS_NOT_SHIPPED_AUTOMATION):
            counts[name] = len(client.read_automations_by_name(name))
    return counts


def test_a_second_bootstrap_changes_nothing_and_keeps_an_operators_value(stack, alert_env):
    first = bootstrap()
    with get_client(sync_client=True) as client:
        client.update_variable(VariableUpdate(name="journeys_batch_size", value=250))
    second = bootstrap()

    assert f"automation {RUN_FAILED_AUTOMATION!r}: created" in first
    assert "secret journeys-smtp-password: created from JOURNEYS_SMTP_PASSWORD" in first
    assert not [line for line in second if "created" in line or "updated" in line]
    assert "variable journeys_batch_size: kept (250)" in second
    assert bootstrapped_objects() == {**dict.fromkeys(VARIABLES, 1), MAIL_LIMIT: 1,
                                      RUN_FAILED_AUTOMATION: 1, ORDER_HELD_AUTOMATION: 1,
                                      LOST_RUNS_AUTOMATION: 1, WEBHOOKS_STOPPED_AUTOMATION: 1,
                                      WEBHOOKS_REFUSED_AUTOMATION: 1,
                                      ORDERS_NOT_SHIPPED_AUTOMATION: 1}
    printed = "\n".join(first + second)
    assert not [value for value in SECRET_VALUES.values() if value in printed]
    assert Secret.load("journeys-smtp-password").get() == "s3cret-smtp"


def test_lost_runs_are_watched_without_any_webhook(stack, monkeypatch):
    """The stack was bootstrapped without JOURNEYS_ALERT_WEBHOOK_URL: no alerts, but the
    automation that marks a run without heartbeats Crashed is there, and an operator who
    disabled it keeps it disabled."""
    monkeypatch.delenv(ALERT_URL_ENV, raising=False)
    with get_client(sync_client=True) as client:
        (lost,) = client.read_automations_by_name(LOST_RUNS_AUTOMATION)
        pool_env = client.read_work_pool(WORK_POOL).base_job_template["variables"][
            "properties"]["env"]["default"]
        client.pause_automation(lost.id)
    try:
        lines = bootstrap()
        with get_client(sync_client=True) as client:
            (again,) = client.read_automations_by_name(LOST_RUNS_AUTOMATION)
    finally:
        with get_client(sync_client=True) as client:
            client.resume_automation(lost.id)

    assert f"automation {LOST_RUNS_AUTOMATION!r}: kept" in lines
    assert (again.id, again.enabled) == (lost.id, False)
    trigger = lost.trigger
    assert (trigger.posture, trigger.within, trigger.after) == (
        Posture.Proactive, LOST_AFTER, {"prefect.flow-run.heartbeat"})
    assert "prefect.flow-run.heartbeat" in trigger.expect
    assert [(a.type, a.state.value) for a in lost.actions] == [
        ("change-flow-run-state", "CRASHED")]
    assert pool_env == {HEARTBEAT_ENV: "30"}


def test_a_pool_made_before_heartbeats_gets_them_and_keeps_its_other_run_env(stack):
    with get_client(sync_client=True) as client:
        template = client.read_work_pool(WORK_POOL).base_job_template
        template["variables"]["properties"]["env"]["default"] = {"OPERATOR_SETTING": "1"}
        client.update_work_pool(WORK_POOL, WorkPoolUpdate(base_job_template=template))

    lines = bootstrap()
    with get_client(sync_client=True) as client:
        env = client.read_work_pool(WORK_POOL).base_job_template["variables"]["properties"][
            "env"]["default"]

    assert f"work pool {WORK_POOL}: updated (heartbeat every 30s)" in lines
    assert env == {HEARTBEAT_ENV: "30", "OPERATOR_SETTING": "1"}
    assert f"work pool {WORK_POOL}: kept (process)" in bootstrap()


def test_a_rotated_secret_is_updated_from_the_environment(stack, alert_env, monkeypatch):
    bootstrap()
    monkeypatch.setenv("JOURNEYS_SECRET_KEY", "rotated-key")

    assert "secret journeys-secret-key: updated from JOURNEYS_SECRET_KEY" in bootstrap()
    assert Secret.load("journeys-secret-key").get() == "rotated-key"


async def emit(api_url: str, event: Event) -> None:
    async with PrefectEventsClient(api_url=api_url) as events:
        await events.emit(event)


def alert_about(webhook, needle: str, timeout: float = 90) -> str:
    """The first alert mentioning `needle` (others, e.g. from a scheduled run, are skipped)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            text = webhook.received.get(timeout=left)["text"]
        except queue.Empty:
            break
        if needle in text:
            return text
    pytest.fail(f"no alert about {needle!r} reached the webhook within {timeout:.0f}s")


def test_held_orders_and_failed_runs_alert_the_webhook(stack, alert_env):
    bootstrap()
    asyncio.run(emit(stack.api_url, Event(
        event="journeys.order.held", resource={"prefect.resource.id": "journeys.order.HOLD-1"},
        payload={"reason": "address_unverified"})))
    assert "went on hold" in alert_about(alert_env, "journeys.order.HOLD-1")
    asyncio.run(emit(stack.api_url, Event(
        event="journeys.orders.not_shipped",
        resource={"prefect.resource.id": "journeys.orders.not_shipped"},
        payload={"orders": 3, "cases_opened": 3})))
    assert "apology" in alert_about(alert_env, "not shipped by their ship date")

    run = run_deployment("order-journey/advance-one-order", timeout=240,
                         parameters={"request": {"order_id": "no-such-order"}})
    assert run.state.is_failed()
    text = alert_about(alert_env, run.name)
    assert "order-journey" in text and "Failed" in text and "no-such-order" in text


def test_webhook_deliveries_that_keep_failing_alert_the_webhook(stack, alert_env):
    """Ten drain passes with quarantined deliveries within an hour: one alert."""
    bootstrap()
    for _ in range(10):
        asyncio.run(emit(stack.api_url, Event(
            event="journeys.inbox.refused", resource={"prefect.resource.id": "journeys.inbox.x1"},
            payload={"quarantined": 1})))
    assert "quarantined" in alert_about(alert_env, "journeys.inbox.x1")
