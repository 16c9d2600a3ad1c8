"""The `journeys` CLI as an operator uses it: JSON shapes, one-line errors, idempotent reruns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from infra.tooling.demo_data import demo_catalog
from tests.conftest import FIXTURES, ROOT

AS_OF = "2026-11-18T10:00:00+00:00"


@pytest.fixture
def cli(engine, flow_env, tmp_path):
    """Run `journeys ARGS` in-process against this test's database; returns (code, out, err)."""
    runner = CliRunner()
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(p) + "\n" for p in demo_catalog(7)))

    def run(*args: str):
        result = runner.invoke(app, list(args))
        return result.exit_code, result.stdout, result.stderr

    assert run("ingest", "products", str(catalog), "--json")[0] == 0
    return run


def test_ingest_prints_counts_and_rerun_is_all_duplicates(cli):
    code, out, _ = cli("ingest", "orders", str(FIXTURES / "orders_shopify.jsonl"), "--json")
    assert code == 0
    assert json.loads(out) == {"received": 3, "accepted": 3, "updated": 0, "duplicates": 0,
                               "quarantined": 0, "deferred": 0}
    code, out, _ = cli("ingest", "orders", str(FIXTURES / "orders_shopify.jsonl"), "--json")
    assert json.loads(out)["duplicates"] == 3


def test_a_file_of_webhook_bodies_goes_through_the_inbox_once(cli, tmp_path):
    """`ingest webhooks`: the same path as the edge; a second run stores nothing new."""
    code, out, _ = cli("ingest", "webhooks", "shopify", str(FIXTURES / "orders_shopify.jsonl"),
                       "--topic", "orders/paid", "--json")
    assert code == 0
    first = json.loads(out)
    assert (first["bodies"], first["processed"], first["intake"]["orders"]["accepted"]) == (3, 3, 3)
    again = json.loads(cli("ingest", "webhooks", "shopify", str(FIXTURES / "orders_shopify.jsonl"),
                           "--topic", "orders/paid", "--json")[1])
    assert (again["bodies"], again["taken"]) == (3, 0)  # stored once: nothing new to drain
    code, _, err = cli("ingest", "webhooks", "shopify", str(FIXTURES / "orders_shopify.jsonl"),
                       "--topic", "orders/teleported")
    assert code == 2 and err.startswith("journeys: --topic 'orders/teleported'")


def test_bad_records_are_quarantined_and_the_rest_accepted(cli, tmp_path):
    good = (FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0]
    bad = json.loads(good) | {"id": 99, "line_items": []}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join([good, json.dumps(bad), "{not json"]) + "\n")

    code, out, _ = cli("ingest", "orders", str(mixed), "--json")
    assert code == 0
    assert json.loads(out) | {} == {"received": 3, "accepted": 1, "updated": 0, "duplicates": 0,
                                    "quarantined": 2, "deferred": 0}
    entries = json.loads(cli("quarantine", "list", "--json")[1])
    reasons = sorted(r["field"] for e in entries for r in e["reasons"])
    assert reasons == ["_record", "line_items"]
    assert all(e["origin"].startswith("mixed.jsonl:") for e in entries)


@pytest.mark.parametrize("content, expected", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "cannot detect format"),
    (b"", "empty"),
])
def test_unreadable_files_give_one_line_not_a_traceback(cli, tmp_path, content, expected):
    path = tmp_path / "orders.bin"
    path.write_bytes(content)
    code, out, err = cli("ingest", "orders", str(path), "--as-of", AS_OF)
    assert code == 2 and out == ""
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_file_and_unknown_order_are_one_line_errors(cli, tmp_path):
    code, _, err = cli("ingest", "orders", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "Traceback" not in err and "nope.jsonl" in err
    code, _, err = cli("order", "does-not-exist")
    assert code == 2 and err.strip() == "journeys: no order with id or name 'does-not-exist'"


def test_run_then_order_json_shows_the_whole_journey(cli):
    cli("ingest", "orders", str(FIXTURES / "orders_shopify.jsonl"), "--as-of", AS_OF)
    code, out, _ = cli("run", "--as-of", AS_OF, "--json")
    assert code == 0 and json.loads(out)["stages"]["confirm"]["advanced"] == 3

    view = json.loads(cli("order", "5432100001", "--json")[1])
    assert view["state"] == "confirmed" and view["hold_reason"] is None
    # confirmed on the 18th (before the 14:00 cutoff): dispatch 19th + 4 US transit days
    assert view["promised_delivery"] == "2026-11-25"
    assert isinstance(view["packing"]["instructions"], list)
    assert isinstance(view["packing"]["insured"], bool)
    [message] = view["messages"]
    assert {k: message[k] for k in ("template", "class", "status", "reason")} == {
        "template": "confirmation", "class": "transactional", "status": "sent", "reason": None}
    assert [e["to"] for e in view["events"]] == ["received", "verified", "packed", "confirmed"]
    assert sorted(a["kind"] for a in view["artifacts"]) == ["invoice", "packing_slip"]
    assert cli("order", "#1001", "--json")[1] == cli("order", "5432100001", "--json")[1]


def test_held_order_released_by_operator_goes_on_to_confirmation(cli, tmp_path):
    order = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0])
    order["financial_status"] = "pending"
    path = tmp_path / "unpaid.jsonl"
    path.write_text(json.dumps(order) + "\n")
    cli("ingest", "orders", str(path), "--as-of", AS_OF)
    cli("run", "--as-of", AS_OF)
    held = json.loads(cli("hold", "list", "--json")[1])
    assert held == [{"external_id": "5432100001", "name": "#1001",
                     "hold_reason": "payment_not_captured: pending"}]
    assert json.loads(cli("report", "--json")[1])["holds_by_reason"] == {"payment_not_captured": 1}
    table = cli("report")[1]  # each table says what it counts
    assert "┃ state" in table and "┃ orders" in table and "┃ reason" in table and "┃ holds" in table
    assert "┃ key" not in table and "review requests by rating: none" in table

    code, _, _ = cli("hold", "release", "5432100001", "--note", "paid by bank transfer",
                     "--by", "ops@northwind")
    assert code == 0
    assert cli("hold", "release", "5432100001")[0] == 2  # no longer on hold: a clear refusal
    after_decision = datetime.now(UTC) + timedelta(minutes=1)  # the operator decides "now"
    cli("run", "--as-of", after_decision.isoformat())
    view = json.loads(cli("order", "5432100001", "--json")[1])
    assert view["state"] == "confirmed"
    decision = next(e for e in view["events"] if e["actor"] == "ops@northwind")
    assert decision["detail"]["note"] == "paid by bank transfer"


def test_customer_text_is_printed_verbatim_never_as_markup(cli, tmp_path):
    order = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0])
    order |= {"name": "[/x] #1001", "financial_status": "pending"}
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(order) + "\n")
    cli("ingest", "orders", str(path), "--as-of", AS_OF)
    cli("run", "--as-of", AS_OF)
    code, out, err = cli("hold", "list")
    assert code == 0 and "[/x] #1001" in out and "Traceback" not in err
    code, out, _ = cli("order", "5432100001")
    assert code == 0 and out.startswith("[/x] #1001 (shopify 5432100001): on_hold")


def test_non_finite_money_is_quarantined_not_a_crash(cli, tmp_path):
    order = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0])
    order["shipping_lines"][0]["price"] = "sNaN"
    path = tmp_path / "nan.jsonl"
    path.write_text(json.dumps(order) + "\n")
    code, out, _ = cli("ingest", "orders", str(path), "--json")
    assert code == 0 and json.loads(out)["quarantined"] == 1


def test_quarantine_show_and_release_with_a_corrected_record(cli, tmp_path):
    record = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0])
    broken = json.loads(json.dumps(record))
    broken["line_items"][0]["price"] = "-98.00"
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(broken) + "\n")
    assert json.loads(cli("ingest", "orders", str(path), "--json")[1])["quarantined"] == 1
    [entry] = json.loads(cli("quarantine", "list", "--json")[1])

    shown = json.loads(cli("quarantine", "show", str(entry["id"]))[1])
    assert json.loads(shown["payload"]) == broken and shown["status"] == "open"
    code, _, err = cli("quarantine", "release", str(entry["id"]))
    assert code == 2 and "still rejected: line_items[0].price" in err

    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text(json.dumps(record) + "\n")
    code, out, _ = cli("quarantine", "release", str(entry["id"]), "--fixed", str(fixed))
    assert code == 0 and "released" in out
    assert json.loads(cli("order", "5432100001", "--json")[1])["state"] == "received"
    assert json.loads(cli("quarantine", "list", "--json")[1]) == []
    code, out, _ = cli("quarantine", "release", str(entry["id"]), "--fixed", str(fixed))
    assert code == 0 and "already released" in out
    assert json.loads(cli("report", "--json")[1])["orders_by_state"] == {"received": 1}
    assert cli("quarantine", "show", "999")[0] == 2


def test_every_run_writes_a_balanced_archived_manifest(cli, flow_env, tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = (FIXTURES / "orders_shopify.jsonl").read_text()
    path.write_text(good + good.splitlines()[0] + "\n" + "{broken\n")
    cli("ingest", "orders", str(path), "--as-of", AS_OF)
    cli("run", "--as-of", AS_OF)

    runs = json.loads(cli("report", "--json")[1])["latest_runs"]
    ingest, sweep = runs["ingest-orders"], runs["sweep"]
    assert {k: ingest[k] for k in ("received", "processed", "quarantined", "duplicates",
                                   "unexplained")} == {
        "received": 5, "processed": 3, "quarantined": 1, "duplicates": 1, "unexplained": 0}
    assert (sweep["received"], sweep["processed"], sweep["unexplained"]) == (9, 9, 0)
    archived = json.loads(flow_env.runtime().archive.get(sweep["ref"]))
    assert archived["run_id"] == sweep["run_id"] and archived["unexplained"] == 0
    assert "/manifests/2026/11/18/sweep/" in sweep["ref"]


def test_an_unbalanced_run_is_recorded_and_fails_loudly(engine, runtime, now):
    from tasks.manifest import Manifest, UnbalancedRun, record_manifest, require_balanced
    from tasks.reporting import report
    from tasks.store.db import session_scope

    books = Manifest("r-1", "sweep", now, received=10, processed=7, quarantined=1, duplicates=1)
    with session_scope(engine) as session:
        record_manifest(session, books, runtime.archive)
    with pytest.raises(UnbalancedRun, match="does not balance"):
        require_balanced(books)
    with session_scope(engine) as session:
        assert report(session)["latest_runs"]["sweep"]["unexplained"] == 1


def _orders_file(tmp_path, name, count, spoil=None):
    """`count` copies of the first Shopify fixture order with distinct ids; `spoil(i, o)` edits."""
    base = json.loads((FIXTURES / "orders_shopify.jsonl").read_text().splitlines()[0])
    lines = []
    for i in range(count):
        order = json.loads(json.dumps(base)) | {"id": 7000 + i, "name": f"#{7000 + i}"}
        lines.append(json.dumps(spoil(i, order) if spoil else order))
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_failing_the_quality_gate_are_quarantined_with_the_check(cli, tmp_path):
    def bad_address(i, order):  # a total that does not add up is held, not quarantined
        return order | {"email": "not-an-address"} if i == 4 else order

    path = _orders_file(tmp_path, "ten.jsonl", 10, bad_address)
    counts = json.loads(cli("ingest", "orders", str(path), "--as-of", AS_OF, "--json")[1])
    assert (counts["accepted"], counts["quarantined"]) == (9, 1)
    [entry] = json.loads(cli("quarantine", "list", "--json")[1])
    assert entry["external_id"] == "7004"
    assert entry["reasons"][0]["field"] == "email"
    assert entry["reasons"][0]["check"] == "expect_column_values_to_match_regex"


def test_a_batch_over_the_failure_threshold_fails_and_stores_nothing(cli, flow_env, tmp_path):
    def from_the_future(i, order):
        return order | {"created_at": "2026-12-24T10:00:00Z"} if i < 6 else order

    path = _orders_file(tmp_path, "future.jsonl", 25, from_the_future)
    code, out, err = cli("ingest", "orders", str(path), "--as-of", AS_OF)
    assert code == 2 and out == ""
    assert err.strip() == ("journeys: orders batch failed the quality gate: 6 of 25 rows (24.0%) "
                           "failed, above the 20% threshold")
    report = json.loads(cli("report", "--json")[1])
    assert report["orders_by_state"] == {} and report["quarantine_by_reason"] == {}
    archived = list((flow_env.runtime().archive.root / "quality").rglob("*.json"))
    assert len(archived) == 1
    assert json.loads(archived[0].read_text())["batches"][0]["stats"]["failed_rows"] == 6


def test_release_re_runs_the_quality_gate(cli, tmp_path):
    def bad_address(i, order):
        return order | {"email": "not-an-address"}

    cli("ingest", "orders", str(_orders_file(tmp_path, "one.jsonl", 1, bad_address)),
        "--as-of", AS_OF)
    [entry] = json.loads(cli("quarantine", "list", "--json")[1])
    code, _, err = cli("quarantine", "release", str(entry["id"]), "--as-of", AS_OF)
    assert code == 2 and "still rejected: email" in err
    fixed = _orders_file(tmp_path, "fixed.jsonl", 1)
    code, _, _ = cli("quarantine", "release", str(entry["id"]), "--fixed", str(fixed),
                     "--as-of", AS_OF)
    assert code == 0 and json.loads(cli("order", "7000", "--json")[1])["state"] == "received"


def test_artifacts_lists_and_fetches_verified_copies(cli, tmp_path):
    cli("ingest", "orders", str(FIXTURES / "orders_shopify.jsonl"), "--as-of", AS_OF)
    cli("run", "--as-of", AS_OF)
    target = tmp_path / "fetched"
    code, out, _ = cli("artifacts", "#1001", "--fetch", str(target), "--json")
    items = json.loads(out)
    assert code == 0
    assert sorted(i["kind"] for i in items) == ["invoice", "mail:confirmation", "packing_slip"]
    assert "Merino Crew Sweater" in (target / "packing_slip.html").read_text()
    assert b"Message-ID: " in (target / "confirmation-v1.eml").read_bytes()
    slip = next(i for i in items if i["kind"] == "packing_slip")
    bundle = Path(slip["ref"].removeprefix("file://").split("#")[0])
    bundle.write_bytes(b"tampered")
    code, _, err = cli("artifacts", "#1001", "--fetch", str(tmp_path / "again"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_tracking_events_pass_the_quality_gate(cli, tmp_path):
    cli("ingest", "orders", str(FIXTURES / "orders_shopify.jsonl"), "--as-of", AS_OF)
    cli("run", "--as-of", AS_OF)
    shipment = {"order_source": "shopify", "order_external_id": "5432100001", "carrier": "ups",
                "tracking_number": "1ZGATE", "shipped_at": AS_OF}
    (tmp_path / "ship.jsonl").write_text(json.dumps(shipment) + "\n")
    cli("ingest", "shipments", str(tmp_path / "ship.jsonl"), "--as-of", AS_OF)
    events = [{"event_id": "ev-1", "tracking_number": "1ZGATE", "carrier": "ups",
               "tag": "InTransit", "occurred_at": "2026-11-18T09:00:00+00:00"},
              {"event_id": "ev-2", "tracking_number": "1ZGATE", "carrier": "ups",
               "tag": "Delivered", "occurred_at": "2026-11-20T09:00:00+00:00"}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    counts = json.loads(cli("ingest", "events", str(tmp_path / "events.jsonl"), "--as-of", AS_OF,
                            "--json")[1])
    assert (counts["accepted"], counts["quarantined"]) == (1, 1)
    [entry] = json.loads(cli("quarantine", "list", "--json")[1])
    assert entry["reasons"][0]["check"] == "expect_column_values_to_be_between"
    assert entry["reasons"][0]["field"] == "checkpoint_in_future_seconds"


def test_archive_reconcile_deletes_only_what_nothing_refers_to(cli, tmp_path):
    cli("ingest", "orders", str(FIXTURES / "orders_shopify.jsonl"), "--as-of", AS_OF)
    cli("run", "--as-of", AS_OF)
    folder = tmp_path / "artifacts" / "documents" / "2026" / "11" / "18"
    lost = folder / "pack-from-a-killed-batch.zip"
    lost.write_bytes(b"a bundle whose batch never committed")
    kept = sorted(p.name for p in folder.iterdir() if p.name != lost.name)

    code, out, _ = cli("archive", "reconcile", "--dry-run", "--grace-minutes", "0", "--json")
    assert code == 0 and json.loads(out)["refs"] == [f"file://{lost}"] and lost.exists()
    assert json.loads(cli("archive", "reconcile", "--json")[1])["too_young"] == 1
    code, out, _ = cli("archive", "reconcile", "--grace-minutes", "0")
    assert code == 0 and "deleted 1" in out and not lost.exists()
    assert sorted(p.name for p in folder.iterdir()) == kept
    code, out, _ = cli("artifacts", "#1001", "--fetch", str(tmp_path / "fetched"))
    assert code == 0  # every referenced document is still there and verifies


def test_config_check_names_every_problem_and_exits_1(tmp_path):
    from tasks.config import SECTIONS

    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", "--config-dir", str(ROOT / "configs")])
    assert ok.exit_code == 0 and ok.stdout.strip() == f"config OK: {len(SECTIONS)} files"
    folder = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", folder)
    (folder / "pages.yaml").write_text("related_products: [", encoding="utf-8")
    (folder / "tracking.yaml").unlink()
    bad = runner.invoke(app, ["config", "check", "--config-dir", str(folder)])
    assert bad.exit_code == 1
    lines = bad.stdout.splitlines()
    assert len(lines) == 2, lines
    assert any("pages.yaml: not valid YAML" in line for line in lines)
    assert any(line.endswith("/tracking.yaml") for line in lines)


def test_every_file_kind_is_one_the_intake_flow_reads():
    from flows.cli.ingest import FILE_KINDS
    from tasks.intake.writers import KINDS

    assert set(FILE_KINDS) | {"feedback"} <= set(KINDS)


# Imports that take seconds and only flows need: a read-only command must not wait for them.
FLOW_MACHINERY = {"prefect", "great_expectations", "pandas", "numpy"}


def test_read_only_commands_load_none_of_the_flow_machinery(tmp_path):
    """`--help`, `report`, `order`, `hold list` in one fresh process: what did they import?"""
    script = (
        "import sys\n"
        "from flows.cli import app\n"
        "for args in (['--help'], ['report', '--json'], ['order', 'nope'], ['hold', 'list']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "sys.stderr.write(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n")
    env = os.environ | {"JOURNEYS_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
                        "JOURNEYS_CONFIG_DIR": str(ROOT / "configs")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    loaded = set(done.stderr.strip().splitlines()[-1].split())
    assert "typer" in loaded and "sqlalchemy" in loaded  # the commands did run
    assert loaded & FLOW_MACHINERY == set()


class JourneysServerStandIn(BaseHTTPRequestHandler):
    """Answers as a Prefect API would the two questions prefect_api asks: healthy? a journeys
    work pool? (`pool` says whether it has one)."""

    pool = True

    def do_GET(self):  # noqa: N802 (http.server's name)
        pool = self.pool and self.path == "/api/work_pools/journeys"
        found = self.path == "/api/health" or pool
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(b"true" if found else b"{}")

    def log_message(self, *args):
        pass


def test_a_running_journeys_server_takes_the_runs_and_another_server_does_not(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import prefect_api

    server = ThreadingHTTPServer(("127.0.0.1", 0), JourneysServerStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api"
    monkeypatch.setattr(prefect_api, "LOCAL_SERVER", url)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    try:
        with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server configured
            assert prefect_api.is_journeys_server(url)
            with prefect_api.prefect_api() as used:
                assert used == url == os.environ["PREFECT_API_URL"] == PREFECT_API_URL.value()
            assert "PREFECT_API_URL" not in os.environ and PREFECT_API_URL.value() is None
            monkeypatch.setattr(JourneysServerStandIn, "pool", False)
            assert not prefect_api.is_journeys_server(url)  # some other Prefect server
            assert not prefect_api.is_journeys_server("http://127.0.0.1:9/api")  # nothing
    finally:
        server.shutdown()


# A flow that does what the sweep's dispatcher does with Prefect (flows/journey.py mail_slot):
# ask for the journeys-mail slot, without waiting when the limit is missing; and log.
TEMPORARY_SERVER_SCRIPT = """
from flows.cli.prefect_api import prefect_api

with prefect_api("prefect") as api:
    from prefect import flow, get_run_logger
    from prefect.concurrency.sync import concurrency

    @flow
    def dispatch_like_the_sweep():
        with concurrency("journeys-mail", occupy=1, strict=False):
            get_run_logger().info("mail sent")
        return "done"

    print(api, dispatch_like_the_sweep())
"""


def test_without_a_prefect_server_a_temporary_one_serves_the_command(tmp_path):
    """A newcomer's `journeys run`: no PREFECT_API_URL, no `journeys server`. One temporary
    server for the command, given the journeys-mail limit (no warning that it is missing),
    every run log delivered before it stops, and nothing left running afterwards."""
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    process = subprocess.Popen([sys.executable, "-c", TEMPORARY_SERVER_SCRIPT], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    api, result = out.split()
    assert api.startswith("http://127.0.0.1:") and result == "done"
    assert "journeys: no Prefect server running: a temporary one" in err
    assert "mail sent" in err  # the run's log, on the console as Prefect prints it
    for problem in ("do not exist", "Error logging to API", "Starting temporary server",
                    "View at"):
        assert problem not in err, err[-3000:]
    with pytest.raises(ProcessLookupError):  # the server went with the command
        os.killpg(process.pid, 0)
