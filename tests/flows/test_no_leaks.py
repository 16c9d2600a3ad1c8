"""Privacy: what operators and Prefect see carries no customer e-mail address and no secret.

The real flows run under the test Prefect server against a store whose customers have
distinctive addresses and names: ingest, sweep, one order's journey, a quarantine release, the
held-orders form (answered through the API), an erasure. Then everything an operator or Prefect
could see is collected and searched: log lines through the API and as this process recorded them,
stdout/stderr, artifacts, flow and task runs (parameters, states), the form's inputs, order
events, every row of the Prefect server's own database, and the CLI's `report`, `order` and
`hold list`. Masked forms (***@domain) are fine; a whole address, a local part or a secret is
a leak. Positive controls prove the search would see one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.worker import EventsWorker
from prefect.flow_runs import resume_flow_run
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL
from sqlalchemy import select
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from flows.parameters import (
    ErasureRequest,
    HoldReviewRequest,
    IngestRequest,
    OrderJourneyRequest,
    QuarantineReleaseRequest,
    SweepRequest,
)
from flows.reporting import mask_emails
from infra.tooling.demo_data import demo_catalog, demo_orders
from tasks.messaging.governor import email_hmac
from tasks.store.db import session_scope
from tasks.store.models import Base, Erasure, Order, OrderEvent, Quarantine
from tests.flows.test_decisions import paused_run_id, start_in_thread

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

SECRET_KEY = "sk-LEAKPROBE-7f3a9c2e1d5b"
SMTP_PASSWORD = "smtp-LEAKPROBE-pw-41b8e6"
DB_PASSWORD = "db-LEAKPROBE-pw-93d1c0"  # PostgreSQL trusts loopback: accepted, never checked
SECRETS = {"secret key": SECRET_KEY, "smtp password": SMTP_PASSWORD, "db password": DB_PASSWORD}
FIRST = ["Zenobia", "Oriel", "Quillon", "Thessaly", "Ysolde", "Ambrosine", "Leocadia", "Evander"]
LAST = ["Vantongeren", "Quennell", "Szymborska", "Ravensworth", "Okonkwo-Brandt", "Fairweather",
        "Marchbanks", "Thistlewood"]
PAYMENT, RISK, STOCK, BAD_EMAIL, NEGATIVE, ERASED = 0, 1, 2, 3, 4, 5  # what each order is


def address(n: int) -> str:
    return f"{FIRST[n]}.{LAST[n]}.{n}@leakprobe-{n}.example".lower()


def probe_orders(now: datetime) -> list[dict[str, Any]]:
    """Demo orders with distinctive customers; holds, a bad address, a quarantined record."""
    orders = demo_orders(len(FIRST), 5, now)  # seed 5: order 2 is out of stock (a hold)
    for n, order in enumerate(orders):
        order["email"] = address(n)
        order["customer"] |= {"id": 7_100_000 + n, "email": address(n), "first_name": FIRST[n],
                              "last_name": LAST[n]}
        order["shipping_address"] |= {"first_name": FIRST[n], "last_name": LAST[n],
                                      "name": f"{FIRST[n]} {LAST[n]}"}
        order["financial_status"] = "paid"
    orders[PAYMENT]["financial_status"] = "pending"
    orders[RISK]["tags"] = "fraud-suspected"
    orders[BAD_EMAIL]["email"] = orders[BAD_EMAIL]["customer"]["email"] = address(
        BAD_EMAIL).replace(".", "..", 1)  # `a..b@x`: looks like an address, is not mailable
    orders[NEGATIVE]["line_items"][0]["price"] = "-12.00"
    return orders


class Scanner:
    """Counts every text it is shown and where a needle (case-insensitive) turned up."""

    def __init__(self, needles: dict[str, str]) -> None:
        self.needles = {label: text.lower() for label, text in needles.items()}
        self.hits: list[str] = []
        self.texts = 0

    def found(self, text: str) -> list[str]:
        lowered = text.lower()
        return [label for label, needle in self.needles.items() if needle in lowered]

    def scan(self, where: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        self.texts += 1
        self.hits += [f"{where}: {label}" for label in self.found(text)]


def leak_needles() -> dict[str, str]:
    """Every whole address and its local part (a masked form keeps only the domain), secrets."""
    emails = [address(n) for n in range(len(FIRST))] + [address(BAD_EMAIL).replace(".", "..", 1)]
    needles = {f"e-mail {e}": e for e in emails}
    needles |= {f"local part {e}": e.split("@")[0] + "@" for e in emails}
    return needles | {f"secret: {label}": value for label, value in SECRETS.items()}


def name_needles() -> dict[str, str]:
    return {f"name {first} {last}": last for first, last in zip(FIRST, LAST, strict=True)}


@pytest.fixture
def probe_env(flow_env, pg_url, monkeypatch):
    """Distinctive secrets for the flows' settings; the database URL carries a password."""
    from tasks.settings import get_settings

    url = make_url(pg_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", url)
    monkeypatch.setenv("JOURNEYS_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("JOURNEYS_SMTP_USER", "journeys-mailer")
    monkeypatch.setenv("JOURNEYS_SMTP_PASSWORD", SMTP_PASSWORD)
    for cached in (get_settings, flow_env.runtime, flow_env.app_engine):
        cached.cache_clear()
    return flow_env


@pytest.fixture
def every_event():
    from prefect.variables import Variable

    Variable.set("journeys_prefect_events", "all", overwrite=True)
    yield
    Variable.unset("journeys_prefect_events")


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def run_every_flow(engine, now, tmp_path) -> dict[str, Any]:
    """The operator's week in seven flow runs; returns what the test checks afterwards."""
    from flows.decisions import review_holds
    from flows.intake import ingest
    from flows.journey import order_journey, sweep
    from flows.operations import erase_customer, release_quarantine

    orders = probe_orders(now)
    catalog = write_jsonl(tmp_path / "catalog.jsonl", demo_catalog(5))
    ingest(IngestRequest(kind="products", source=catalog, as_of=now))
    ingest(IngestRequest(kind="orders", source=write_jsonl(tmp_path / "o.jsonl", orders),
                         as_of=now))
    sweep(SweepRequest(as_of=now))
    order_journey(OrderJourneyRequest(order_id=str(orders[BAD_EMAIL]["id"]), as_of=now))
    with session_scope(engine) as session:
        entry_ids = list(session.scalars(select(Quarantine.id)))
    release_quarantine(QuarantineReleaseRequest(entry_ids=entry_ids, as_of=now))
    thread, answer = start_in_thread(review_holds, HoldReviewRequest(timeout_minutes=5))
    resume_flow_run(paused_run_id("review-holds"), run_input={
        "operator": "ana.ops", "note": "paid by transfer", "order_1": "release"})
    thread.join(timeout=120)
    erase_customer(ErasureRequest(order_id=str(orders[ERASED]["id"]), requested_by="dpo.ops"))
    return {"orders": orders, "quarantined": len(entry_ids), "form": answer["result"]}


# --- collecting what Prefect shows -----------------------------------------------------------


def paged(read, limit: int = 200) -> list[Any]:
    found, offset = [], 0
    while batch := read(limit=limit, offset=offset):
        found += batch
        offset += len(batch)
    return found


def our_flow_runs(client, since: datetime) -> list[Any]:
    started = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
    return paged(lambda **page: client.read_flow_runs(flow_run_filter=started, **page))


def order_events(client, external_ids: list[str]) -> list[dict[str, Any]]:
    body = {"filter": {"resource": {"id": [f"journeys.order.{e}" for e in external_ids]},
                       "occurred": {"since": "2026-01-01T00:00:00Z",
                                    "until": "2027-12-31T00:00:00Z"}}, "limit": 50}
    page = client.request("POST", "/events/filter", json=body).json()
    found = page["events"]
    while page.get("next_page"):
        page = client._client.get(page["next_page"]).json()
        found += page["events"]
    return found


def run_completed_event_seen(client, run_id) -> bool:
    body = {"filter": {"resource": {"id": [f"prefect.flow-run.{run_id}"]},
                       "event": {"name": ["prefect.flow-run.Completed"]}}, "limit": 5}
    return bool(client.request("POST", "/events/filter", json=body).json()["events"])


def wait_for_events(client, external_ids, expected: int, last_run_id, timeout=30):
    """The server persists events in batches (every few seconds): wait for ours to land."""
    deadline = time.monotonic() + timeout
    while True:
        events = order_events(client, external_ids)
        done = len(events) >= expected and run_completed_event_seen(client, last_run_id)
        if done or time.monotonic() > deadline:
            return events
        time.sleep(1)


def scan_prefect_api(scanner: Scanner, client, runs) -> dict[str, int]:
    """Logs, artifacts, flow runs (parameters, states), task runs, form inputs of these runs."""
    ids = [run.id for run in runs]
    logs = paged(lambda **page: client.read_logs(
        LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), **page))
    for log in logs:
        scanner.scan(f"log {log.name}", log.message)
    artifacts = paged(lambda **page: client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)), **page))
    for artifact in artifacts:
        scanner.scan(f"artifact {artifact.key}", [artifact.key, artifact.description,
                                                  artifact.data])
    tasks = paged(lambda **page: client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), **page))
    inputs = 0
    for run in runs:
        scanner.scan(f"flow run {run.name}", run.model_dump(mode="json"))
        states = client.read_flow_run_states(run.id)
        scanner.scan(f"flow run {run.name} states", [s.model_dump(mode="json") for s in states])
        for form in client.filter_flow_run_input(run.id, "", 100, set()):
            scanner.scan(f"form input {form.key}", form.value)
            inputs += 1
    for task in tasks:
        scanner.scan(f"task run {task.name}", task.model_dump(mode="json"))
    return {"flow runs": len(runs), "log lines": len(logs), "artifacts": len(artifacts),
            "parameter sets": len(runs) + len(tasks), "form inputs": inputs}


def scan_prefect_database(scanner: Scanner) -> int:
    """Every value of every row the Prefect server stored (events, logs, runs, inputs ...)."""
    path = make_url(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).database
    rows = 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                rows += 1
                text = " ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                                for v in row)
                if scanner.found(text):
                    scanner.scan(f"prefect db {table}", text)
    return rows


def app_database_text(engine) -> str:
    """The app database as text, for the positive control: the addresses ARE kept there."""
    with session_scope(engine) as session:
        return " ".join(json.dumps([dict(r) for r in session.execute(select(t)).mappings()],
                                   default=str) for t in Base.metadata.sorted_tables)


def cli_outputs(orders) -> dict[str, str]:
    from flows.cli import app

    runner = CliRunner()
    commands = [["report"], ["report", "--json"], ["hold", "list"], ["hold", "list", "--json"]]
    commands += [["order", str(o["id"]), *flag] for o in orders if o is not orders[NEGATIVE]
                 for flag in ([], ["--json"])]
    outputs = {}
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        outputs[" ".join(args)] = result.stdout + result.stderr
    return outputs


# --- the test ----------------------------------------------------------------------------------


def test_no_address_or_secret_reaches_logs_artifacts_runs_events_or_the_cli(
        engine, probe_env, now, tmp_path, caplog, capsys, every_event, figure):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="prefect")
    for chatty in ("httpcore", "websockets", "great_expectations"):  # transport and registry
        caplog.set_level(logging.INFO, logger=chatty)  # traces, thousands of lines, no data
    since = datetime.now(UTC) - timedelta(seconds=1)
    done = run_every_flow(engine, now, tmp_path)
    orders = done["orders"]
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)

    with session_scope(engine) as session:
        emitted = len(session.scalars(select(OrderEvent.id).where(
            OrderEvent.kind == "state", OrderEvent.to_state != "received")).all())
        erasure = session.scalars(select(Erasure)).one()
        states = dict(session.execute(select(Order.external_id, Order.state)).all())
    leaks, names = Scanner(leak_needles()), Scanner(name_needles())
    # The held order's reason quotes its bad address: it must be seen, masked, by operators.
    # (An artifact's markdown cell shows `***@` as spaces; with no leak, any hit is masked.)
    masked = Scanner({"masked": f"@leakprobe-{BAD_EMAIL}.example"})
    with get_client(sync_client=True) as client:
        runs = our_flow_runs(client, since)
        last = max(runs, key=lambda r: r.start_time)
        events = wait_for_events(client, [str(o["id"]) for o in orders], emitted, last.id)
        counted = {}
        for scanner in (leaks, names, masked):
            counted = scan_prefect_api(scanner, client, runs)
            for event in events:
                scanner.scan(f"event {event['event']}", event)
    db_rows = [scan_prefect_database(scanner) for scanner in (leaks, names)][0]
    outputs = cli_outputs(orders)
    captured = capsys.readouterr()
    for scanner in (leaks, names, masked):
        for command, text in outputs.items():
            scanner.scan(f"cli {command}", text)
        for record in caplog.records:
            scanner.scan(f"log record {record.name}", record.getMessage())
        scanner.scan("stdout", captured.out)
        scanner.scan("stderr", captured.err)

    # The runs did what an operator's week does, with these very secrets.
    assert len(runs) == 7
    assert done["form"]["release"] == 1 and done["quarantined"] == 1
    assert states[str(orders[BAD_EMAIL]["id"])] == "on_hold"
    assert states[str(orders[ERASED + 1]["id"])] == "confirmed"
    assert erasure.subject == email_hmac(address(ERASED), SECRET_KEY)  # the key in use
    settings = probe_env.runtime().settings
    assert (settings.smtp_password, probe_env.app_engine().url.password) == (
        SMTP_PASSWORD, DB_PASSWORD)
    assert len(events) >= emitted > 0
    # Positive controls: the same search finds the addresses where they belong, and a leak.
    app_text = app_database_text(engine)
    kept = [address(n) for n in range(len(FIRST)) if n not in (ERASED, NEGATIVE, BAD_EMAIL)]
    assert all(Scanner({"a": a}).found(app_text) for a in kept)
    planted = f"could not mail {address(BAD_EMAIL).upper()} (key {SECRET_KEY})"
    assert len(Scanner(leak_needles()).found(planted)) == 3  # address, local part, key
    assert Scanner(leak_needles()).found(mask_emails(planted)) == ["secret: secret key"]
    assert leaks.hits == []
    assert names.hits == []
    assert {hit.split(" ")[0] for hit in masked.hits} >= {"artifact", "form", "cli"}

    figure(f"privacy: {counted['flow runs']} flow runs, {counted['log lines']} log lines, "
           f"{counted['artifacts']} artifacts, {counted['parameter sets']} parameter sets, "
           f"{counted['form inputs']} form inputs, {len(events)} order events, "
           f"{len(caplog.records)} process log records, {len(outputs)} CLI outputs, "
           f"{db_rows} Prefect database rows scanned — unmasked e-mails 0, customer names 0, "
           "secrets 0")
