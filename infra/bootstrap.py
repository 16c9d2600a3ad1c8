"""Create what the journeys deployments need on a Prefect server; safe to rerun.

Makes the `journeys` process work pool, the operator-tunable Variables, Secret blocks from the
environment, the `journeys-mail` global concurrency limit, the lost-runs automation (a flow run
whose heartbeats stop is marked Crashed) and the alert automations. Anything that exists is
kept: a second run changes nothing and never overwrites a value an operator edited. Secret
values are never printed or logged.

    python -m infra.bootstrap        # against PREFECT_API_URL
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from prefect import get_client
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.blocks.system import Secret
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    VariableCreate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.workers.process import ProcessWorker

WORK_POOL = "journeys"
TAG = "journeys"
VARIABLES: dict[str, Any] = {
    "journeys_batch_size": 1000,
    "journeys_daily_shards": 1,
    "journeys_decision_timeout_minutes": 240,
    "journeys_prefect_events": "exceptions",  # exceptions | all | off (see order_events.py)
}
SECRETS = {  # block name → environment variable it is filled from
    "journeys-secret-key": "JOURNEYS_SECRET_KEY",
    "journeys-smtp-password": "JOURNEYS_SMTP_PASSWORD",
}
MAIL_LIMIT = "journeys-mail"
ALERT_BLOCK = "journeys-alerts"
ALERT_URL_ENV = "JOURNEYS_ALERT_WEBHOOK_URL"
RUN_FAILED_AUTOMATION = "journeys: flow run failed"
ORDER_HELD_AUTOMATION = "journeys: orders on hold"
WEBHOOKS_STOPPED_AUTOMATION = "journeys: webhooks stopped"
WEBHOOKS_REFUSED_AUTOMATION = "journeys: webhooks refused"
ORDERS_NOT_SHIPPED_AUTOMATION = "journeys: orders not shipped"
WEBHOOKS_QUIET = timedelta(hours=12)  # a small store can be quiet overnight
LOST_RUNS_AUTOMATION = "journeys: lost runs"
# A flow run's process sends a heartbeat event every HEARTBEAT_SECONDS (Prefect's minimum; its
# default, 180, is too slow for a 5-minute sweep). The pool passes the setting to every flow run;
# a run with no heartbeat for LOST_AFTER (three missed beats) lost its process: it is Crashed.
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
HEARTBEAT_SECONDS = 30
LOST_AFTER = timedelta(seconds=90)


def bootstrap(client: SyncPrefectClient | None = None) -> list[str]:
    """Make every missing object; returns one line per object saying what happened to it.

    `client` is a sync client (`get_client(sync_client=True)`); None opens one on PREFECT_API_URL.
    """
    if client is None:
        if not PREFECT_API_URL.value():  # else Prefect would bootstrap a throw-away server
            raise RuntimeError("set PREFECT_API_URL to the Prefect server to bootstrap")
        with get_client(sync_client=True) as own_client:
            return bootstrap(own_client)
    # Block.save talks to the API in the settings, not to `client`: point both at one server.
    with temporary_settings({PREFECT_API_URL: str(client.api_url).rstrip("/")}):
        return [
            ensure_work_pool(client),
            *[ensure_variable(client, name, value) for name, value in VARIABLES.items()],
            *[ensure_secret(client, name, env) for name, env in SECRETS.items()],
            ensure_mail_limit(client),
            ensure_automation(client, lost_runs_automation()),
            *ensure_alerts(client),
        ]


def ensure_work_pool(client: SyncPrefectClient) -> str:
    """The process pool every deployment runs on; workers join it with `--pool journeys`."""
    try:
        pool = client.read_work_pool(WORK_POOL)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(
            name=WORK_POOL, type="process",
            description="Runs the journeys flows as processes on the machines of its workers.",
            base_job_template=with_heartbeat(ProcessWorker.get_default_base_job_template()),
        ))
        return f"work pool {WORK_POOL}: created (process, heartbeat every {HEARTBEAT_SECONDS}s)"
    if pool.type != "process" or HEARTBEAT_ENV in run_env_defaults(pool.base_job_template):
        return f"work pool {WORK_POOL}: kept ({pool.type})"
    client.update_work_pool(WORK_POOL, WorkPoolUpdate(
        base_job_template=with_heartbeat(pool.base_job_template)))
    return f"work pool {WORK_POOL}: updated (heartbeat every {HEARTBEAT_SECONDS}s)"


def run_env_defaults(template: dict[str, Any]) -> dict[str, Any]:
    """The environment the pool gives every flow run (its `env` job variable's default)."""
    return template["variables"]["properties"].get("env", {}).get("default") or {}


def with_heartbeat(template: dict[str, Any]) -> dict[str, Any]:
    """The template, with flow runs sending heartbeats as often as the lost-runs automation
    expects. A run's own `env` job variables are merged over it, not instead of it."""
    template = json.loads(json.dumps(template))
    env = template["variables"]["properties"].setdefault("env", {"type": "object"})
    env["default"] = {HEARTBEAT_ENV: str(HEARTBEAT_SECONDS), **run_env_defaults(template)}
    return template


def ensure_variable(client: SyncPrefectClient, name: str, default: Any) -> str:
    """Create a knob with its default; an existing value is the operator's and stays."""
    existing = client.read_variable_by_name(name)
    if existing is not None:
        return f"variable {name}: kept ({json.dumps(existing.value)})"
    client.create_variable(VariableCreate(name=name, value=default, tags=[TAG]))
    return f"variable {name}: created ({json.dumps(default)})"


def ensure_secret(client: SyncPrefectClient, name: str, env: str) -> str:
    """Store a secret from the environment; the environment wins, so rotation is a rerun."""
    value = os.environ.get(env) or None
    current = read_block_data(client, name, Secret.get_block_type_slug())
    if value is None:
        state = "kept" if current is not None else f"not created ({env} is not set)"
        return f"secret {name}: {state}"
    if current is not None and current.get("value") == value:
        return f"secret {name}: kept"
    Secret(value=value).save(name, overwrite=True)
    return f"secret {name}: {'updated' if current is not None else 'created'} from {env}"


def read_block_data(client: SyncPrefectClient, name: str, slug: str) -> dict[str, Any] | None:
    """A block document's data (secrets included), or None when there is no such block."""
    try:
        return client.read_block_document_by_name(name, block_type_slug=slug).data
    except ObjectNotFound:
        return None


def ensure_mail_limit(client: SyncPrefectClient) -> str:
    """One mail dispatcher at a time across all workers; an operator may change the limit."""
    try:
        limit = client.read_global_concurrency_limit_by_name(MAIL_LIMIT)
        return f"concurrency limit {MAIL_LIMIT}: kept (limit {limit.limit})"
    except ObjectNotFound:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=MAIL_LIMIT, limit=1))
        return f"concurrency limit {MAIL_LIMIT}: created (limit 1)"


def ensure_alerts(client: SyncPrefectClient) -> list[str]:
    """Alerts for failed runs and held orders, sent to the webhook block journeys-alerts."""
    block_id, line = ensure_alert_block(client)
    if block_id is None:
        return [line]
    return [line, *[ensure_automation(client, a) for a in alert_automations(block_id)]]


def ensure_alert_block(client: SyncPrefectClient) -> tuple[Any, str]:
    """The webhook block from JOURNEYS_ALERT_WEBHOOK_URL, or one an operator made in the UI."""
    url = os.environ.get(ALERT_URL_ENV) or None
    slug = CustomWebhookNotificationBlock.get_block_type_slug()
    try:
        document = client.read_block_document_by_name(ALERT_BLOCK, block_type_slug=slug)
    except ObjectNotFound:
        document = None
    if url is None and document is None:
        return None, (f"automations: not created; set {ALERT_URL_ENV} to a webhook URL (Slack, "
                      f"Teams, any HTTP endpoint) and rerun `journeys deploy` to be alerted "
                      f"about failed runs and held orders")
    if document is not None and (url is None or document.data.get("url") == url):
        return document.id, f"notification block {ALERT_BLOCK}: kept"
    block = CustomWebhookNotificationBlock(
        name="journeys alerts", url=url, json_data={"text": "{{subject}}\n{{body}}"})
    block_id = block.save(ALERT_BLOCK, overwrite=True)
    state = "created" if document is None else "updated"
    return block_id, f"notification block {ALERT_BLOCK}: {state} from {ALERT_URL_ENV}"


def lost_runs_automation(within: timedelta = LOST_AFTER) -> AutomationCore:
    """A journeys flow run whose heartbeats stop (its process or machine died) becomes Crashed.

    Prefect's "detect zombie flows" automation, limited to runs tagged journeys: each heartbeat
    opens a window of `within`; another heartbeat, or the run's end (Completed, Failed,
    Cancelled, Crashed) or a pause, closes it. Only a window nobody closed fires, so a run that
    completed after its last heartbeat is never touched. That holds only while the server
    evaluates every event: on SQLite, Prefect's triggers service used to lose a Completed event
    to "database is locked" (the stack now begins SQLite writes IMMEDIATE:
    infra/stack.py `immediate_sqlite_transactions`) and then fired for the completed run.
    Should a heartbeat still reach the server after the run's end, the state change is refused
    for the finished run (no `force`): the run stays Completed.

    The Crashed state alerts like any crash (RUN_FAILED_AUTOMATION). Running the deployment
    again resumes the work: every stage is idempotent.
    """
    ends = ("Completed", "Failed", "Cancelled", "Crashed", "Paused", "Suspended")
    return AutomationCore(
        name=LOST_RUNS_AUTOMATION,
        description=f"Marks a journeys flow run Crashed when it sends no heartbeat for "
                    f"{within.total_seconds():.0f}s (its worker or machine died).",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag",
                           "prefect.resource.id": f"prefect.tag.{TAG}"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in ends)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=within,
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"No heartbeat for {within.total_seconds():.0f}s: the flow run's process "
                    f"is gone (worker or machine died). Run the deployment again to resume; "
                    f"every stage is safe to repeat.",
        )],
    )


def alert_automations(block_id: Any) -> list[AutomationCore]:
    return [run_failed_automation(block_id), order_held_automation(block_id),
            webhooks_stopped_automation(block_id), webhooks_refused_automation(block_id),
            orders_not_shipped_automation(block_id)]


def orders_not_shipped_automation(block_id: Any) -> AutomationCore:
    """Orders past their ship date without a parcel (each sweep that flags some emits one
    journeys.orders.not_shipped): one alert per event, the customers got an apology."""
    return AutomationCore(
        name=ORDERS_NOT_SHIPPED_AUTOMATION,
        description="Alerts journeys-alerts when confirmed orders pass their ship date unshipped.",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "journeys.orders.not_shipped"},
            expect={"journeys.orders.not_shipped"},
            posture=Posture.Reactive, threshold=1, within=timedelta(0),
        ),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="journeys: orders past their ship date",
            body="Orders confirmed and not shipped by their ship date: {{ event.payload }}. "
                 "Each customer got an apology with a new estimate and each order a service "
                 "case: see journeys case list and the sweep summary.",
        )],
    )


def webhooks_stopped_automation(block_id: Any, quiet: timedelta = WEBHOOKS_QUIET
                                ) -> AutomationCore:
    """A provider that sent webhooks and then nothing for `quiet`: its subscription may be gone
    (Shopify deletes one after 8 failed retries) or the edge unreachable. Sweeps emit
    journeys.inbox.received per provider whenever they drain its deliveries."""
    return AutomationCore(
        name=WEBHOOKS_STOPPED_AUTOMATION,
        description=f"Alerts journeys-alerts when a provider's webhooks stop for "
                    f"{quiet.total_seconds() / 3600:.0f} h.",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "journeys.inbox.*"},
            after={"journeys.inbox.received"}, expect={"journeys.inbox.received"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=quiet,
        ),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="journeys: no webhooks from {{ event.resource.id }}",
            body="No deliveries drained from {{ event.resource.id }} for "
                 f"{quiet.total_seconds() / 3600:.0f} h. Check the provider's webhook "
                 "subscription and the edge (/readyz); reconcile-shopify catches up on orders.",
        )],
    )


def webhooks_refused_automation(block_id: Any) -> AutomationCore:
    """Deliveries that keep landing in quarantine: ten drain passes with refusals in an hour."""
    return AutomationCore(
        name=WEBHOOKS_REFUSED_AUTOMATION,
        description="Alerts journeys-alerts when webhook deliveries keep being quarantined.",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "journeys.inbox.*"},
            expect={"journeys.inbox.refused"},
            posture=Posture.Reactive, threshold=10, within=timedelta(hours=1),
        ),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="journeys: webhook deliveries keep failing",
            body="{{ event.resource.id }}: deliveries are being quarantined ({{ event.payload }})."
                 " See journeys quarantine list and journeys report (inbox).",
        )],
    )


def run_failed_automation(block_id: Any) -> AutomationCore:
    """Every journeys flow run (tagged journeys) that fails or crashes: one alert per run."""
    return AutomationCore(
        name=RUN_FAILED_AUTOMATION,
        description="Alerts journeys-alerts when a journeys flow run fails or crashes.",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "tag",
                           "prefect.resource.id": f"prefect.tag.{TAG}"},
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive, threshold=1, within=timedelta(0),
        ),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="journeys: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
            body="{{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}: "
                 "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}",
        )],
    )


def order_held_automation(block_id: Any) -> AutomationCore:
    """Orders put on hold: at most one alert per 15 minutes, however many orders were held."""
    return AutomationCore(
        name=ORDER_HELD_AUTOMATION,
        description="Alerts journeys-alerts (at most every 15 minutes) when orders go on hold.",
        tags=[TAG],
        trigger=EventTrigger(
            match={"prefect.resource.id": "journeys.order.*"},
            expect={"journeys.order.held"},
            posture=Posture.Reactive, threshold=1, within=timedelta(minutes=15),
        ),
        actions=[SendNotification(
            block_document_id=block_id,
            subject="journeys: orders are waiting on hold",
            body="{{ event.resource.id }} went on hold ({{ event.payload }}); more may follow in "
                 "the next 15 minutes. Decide them with the review-holds deployment.",
        )],
    )


def ensure_automation(client: SyncPrefectClient, wanted: AutomationCore) -> str:
    """One automation per name: create, update a changed definition, or keep it as it is.

    Whether it is enabled is the operator's choice and survives an update.
    """
    found = client.read_automations_by_name(wanted.name)
    for duplicate in found[1:]:
        client.delete_automation(duplicate.id)
    if not found:
        client.create_automation(wanted)
        return f"automation {wanted.name!r}: created"
    current = found[0]
    wanted = wanted.model_copy(update={"enabled": current.enabled})
    if definition(current) == definition(wanted):
        return f"automation {wanted.name!r}: kept"
    client.update_automation(current.id, wanted)
    return f"automation {wanted.name!r}: updated"


def definition(automation: AutomationCore) -> dict[str, Any]:
    """What an automation does, without the ids the server assigns."""
    data = AutomationCore.model_validate(automation.model_dump()).model_dump(mode="json")
    data["trigger"].pop("id", None)
    for name in ("after", "expect", "for_each"):  # sets: their JSON order is arbitrary
        if isinstance(data["trigger"].get(name), list):
            data["trigger"][name] = sorted(data["trigger"][name])
    return data


if __name__ == "__main__":
    for line in bootstrap():
        print(line)
