"""`journeys` command line: thin commands over the flows and the store's queries."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's temporary server creates its database on first use; 20 s is not enough on a busy
# two-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import ArgumentError

from tasks.config import ConfigError
from tasks.runtime import Runtime
from tasks.settings import get_settings
from tasks.store.db import engine_for, session_scope
from tasks.store.migrate import ensure_schema, upgrade

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
ingest_app = typer.Typer(no_args_is_help=True, help="Load catalog and orders from files.")
hold_app = typer.Typer(no_args_is_help=True, help="Orders on hold: list, release, cancel.")
quarantine_app = typer.Typer(no_args_is_help=True, help="Records that could not be accepted.")
case_app = typer.Typer(no_args_is_help=True, help="Service cases: list and decide.")
inbox_app = typer.Typer(no_args_is_help=True, help="Webhook deliveries the edge stored.")
app.add_typer(db_app, name="db")
app.add_typer(ingest_app, name="ingest")
app.add_typer(hold_app, name="hold")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(case_app, name="case")
app.add_typer(inbox_app, name="inbox")

console = Console(markup=False)  # customer text like "[/x]" must print as-is, never as markup
T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
AsOfOpt = Annotated[
    str | None, typer.Option("--as-of", help="ISO 8601 instant to act as of (default: now).")
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="Override format detection (shopify|canonical|csv).")
]


class UserError(Exception):
    """Something the user can fix; printed as one line, no traceback."""


def user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn known input and config problems into a one-line message and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from tasks.intake import IntakeError
        from tasks.intake.release import QuarantineNotFound
        from tasks.quality.gate import GateFailed
        from tasks.settings import SecretUnavailable
        from tasks.store.queries import OrderNotFound

        try:
            return fn(*args, **kwargs)
        except (UserError, IntakeError, ConfigError, OrderNotFound, QuarantineNotFound,
                GateFailed, SecretUnavailable) as exc:
            message = str(exc)
        except ValidationError as exc:  # a JOURNEYS_* setting with a bad value
            first = exc.errors()[0]
            message = f"setting JOURNEYS_{str(first['loc'][0]).upper()}: {first['msg']}"
        except ArgumentError as exc:
            message = f"JOURNEYS_DATABASE_URL: {exc}"
        sys.stderr.write(f"journeys: {message}\n")  # one line, never wrapped by rich
        raise typer.Exit(2)

    return wrapper


def runtime() -> Runtime:
    """The flows' runtime: the same settings and secrets (Secret blocks too) as a worker's."""
    from flows.common import runtime as shared_runtime

    return shared_runtime()


def app_engine():
    """The app database, migrated to the newest schema on first use."""
    engine = engine_for(get_settings().database_url)
    ensure_schema(engine)
    return engine


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def parse_instant(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--as-of {value!r} is not an ISO 8601 date-time") from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


# --- db -------------------------------------------------------------------------------------


@db_app.command("upgrade")
@user_errors
def db_upgrade() -> None:
    """Apply database migrations up to the newest schema."""
    upgrade(engine_for(get_settings().database_url))
    console.print("database is at the newest schema")


# --- ingest ---------------------------------------------------------------------------------


def ingest_file(kind: str, path: Path, fmt: str | None, now: datetime) -> dict[str, int]:
    """Through the ingest flow: quality gate per batch, one transaction per batch, manifest."""
    from flows.intake import ingest, read
    from flows.parameters import IngestRequest

    # Refuse an unreadable file before a flow run (and a Prefect server) is started for it.
    next(iter(read(kind, path, fmt)), None)
    app_engine()
    return ingest(IngestRequest(kind=kind, source=str(path), format=fmt, as_of=now))


def show_counts(title: str, counts: dict[str, int], as_json: bool) -> None:
    if as_json:
        print_json(counts)
        return
    table = Table(title=title)
    for name in counts:
        table.add_column(name, justify="right")
    table.add_row(*(str(v) for v in counts.values()))
    console.print(table)


@ingest_app.command("orders")
@user_errors
def ingest_orders_cmd(
    path: Path, fmt: FormatOpt = None, as_of: AsOfOpt = None, as_json: JsonFlag = False
) -> None:
    """Ingest orders: Shopify order JSON Lines, canonical JSON Lines, or CSV (one row per line)."""
    counts = ingest_file("orders", path, fmt, parse_instant(as_of))
    show_counts(f"orders from {path}", counts, as_json)


@ingest_app.command("products")
@user_errors
def ingest_products_cmd(
    path: Path, fmt: FormatOpt = None, as_of: AsOfOpt = None, as_json: JsonFlag = False
) -> None:
    """Ingest the catalog: Shopify product JSON Lines or CSV (sku,title,category,tags,...)."""
    counts = ingest_file("products", path, fmt, parse_instant(as_of))
    show_counts(f"products from {path}", counts, as_json)


@ingest_app.command("shipments")
@user_errors
def ingest_shipments_cmd(
    path: Path, fmt: FormatOpt = None, as_of: AsOfOpt = None, as_json: JsonFlag = False
) -> None:
    """Ingest shipments: Shopify fulfillments (or orders with fulfillments[]) or canonical."""
    counts = ingest_file("shipments", path, fmt, parse_instant(as_of))
    show_counts(f"shipments from {path}", counts, as_json)


@ingest_app.command("events")
@user_errors
def ingest_events_cmd(
    path: Path, fmt: FormatOpt = None, as_of: AsOfOpt = None, as_json: JsonFlag = False
) -> None:
    """Ingest tracking events: AfterShip webhook bodies or canonical events (JSON Lines)."""
    counts = ingest_file("events", path, fmt, parse_instant(as_of))
    show_counts(f"tracking events from {path}", counts, as_json)


@ingest_app.command("feedback")
@user_errors
def ingest_feedback_cmd(path: Path, as_of: AsOfOpt = None, as_json: JsonFlag = False) -> None:
    """Ingest delivery-survey answers (JSON Lines); low ratings and issues open service cases."""
    counts = ingest_file("feedback", path, None, parse_instant(as_of))
    show_counts(f"feedback from {path}", counts, as_json)


PROVIDERS = ("shopify", "aftership")


@ingest_app.command("webhooks")
@user_errors
def ingest_webhooks_cmd(
    provider: Annotated[str, typer.Argument(help="shopify | aftership")],
    path: Path,
    topic: Annotated[str | None, typer.Option(
        "--topic", help="Shopify topic of every body in the file, e.g. orders/paid, "
        "fulfillments/update, products/update (AfterShip bodies name their own event).")] = None,
    as_of: AsOfOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Ingest a file of webhook bodies (JSON Lines) exactly as the edge takes them: each body
    goes into the inbox, then the inbox is drained through the same intake."""
    from flows.journey import drain
    from flows.parameters import SweepRequest
    from tasks import inbox

    if provider not in PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    taken = {t for p, t in (*inbox.KIND_OF_TOPIC, *inbox.ACTION_OF_TOPIC) if p == "shopify"}
    if provider == "shopify" and topic not in taken:
        known = sorted(taken)
        raise UserError(f"--topic {topic!r} is not taken in from files; one of {', '.join(known)}")
    now, settings = parse_instant(as_of), get_settings()
    engine = inbox.inbox_engine(inbox.inbox_url(settings), settings.database_url)
    try:
        with session_scope(engine) as session:
            stored = inbox.store_file(session, path, provider, topic, now)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    app_engine()
    result = drain(SweepRequest(as_of=now))
    counts = {"bodies": stored, **{k: v for k, v in result.items() if k != "intake"}}
    if as_json:
        print_json(counts | {"intake": result["intake"]})
    else:
        show_counts(f"{provider} webhook bodies from {path}", counts, as_json)


@ingest_app.command("bounces")
@user_errors
def ingest_bounces_cmd(path: Path, as_of: AsOfOpt = None, as_json: JsonFlag = False) -> None:
    """Suppress a provider's bounce/complaint list: CSV (email,type[,reason]) or JSON Lines
    ({"email", "type": bounce|complaint, "reason"}). Bad rows are reported, never fatal."""
    from tasks.messaging.bounces import ListError, ingest_list

    engine = app_engine()
    try:
        result = ingest_list(lambda: session_scope(engine), path, parse_instant(as_of),
                             runtime().settings.secret_key)
    except ListError as exc:
        raise UserError(str(exc)) from None
    rejected = [{"line": line, "reason": why} for line, why in result.rejected]
    if as_json:
        print_json(result.counts() | {"rejected_rows": rejected})
        return
    show_counts(f"bounces and complaints from {path}", result.counts(), as_json)
    for row in rejected:
        console.print(f"line {row['line']}: {row['reason']}")


# --- reconcile ------------------------------------------------------------------------------

reconcile_app = typer.Typer(no_args_is_help=True, help="Pull what webhooks missed from the source.")
app.add_typer(reconcile_app, name="reconcile")


@reconcile_app.command("shopify")
@user_errors
def reconcile_shopify_cmd(
    since: Annotated[str | None, typer.Option(
        "--since", help="ISO 8601 instant: orders updated after it (default: the last "
        "reconciled version less 5 minutes, else 72 hours back).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Pull Shopify orders updated since the watermark (Admin API) into the webhook inbox, then
    drain it through intake, as the hourly reconcile-shopify deployment does."""
    from flows.parameters import ReconcileRequest
    from flows.reconcile import reconcile_shopify
    from tasks.shopify_admin import ShopifyError

    try:
        instant = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise UserError(f"--since {since!r} is not an ISO 8601 date-time") from None
    if instant is not None and instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    app_engine()
    try:
        report = reconcile_shopify(ReconcileRequest(since=instant))
    except ShopifyError as exc:
        raise UserError(f"Shopify: {exc}") from None
    if as_json:
        print_json(report)
    else:
        show_counts("Shopify orders reconciled", {k: v for k, v in report.items()
                                                  if k != "inbox"}, as_json)


@inbox_app.command("retry")
@user_errors
def inbox_retry_cmd(
    status: Annotated[list[str], typer.Option(
        "--status", help="Which settled deliveries to take again: failed (default), ignored "
        "(a topic journeys now acts on), quarantined.")] = ["failed"],  # noqa: B006
    topic: Annotated[str | None, typer.Option("--topic", help="Only this topic.")] = None,
) -> None:
    """Put settled webhook deliveries back in line; the next sweep (or inbox-drain) takes them."""
    from tasks import inbox

    unknown = set(status) - {inbox.FAILED, inbox.IGNORED, inbox.QUARANTINED}
    if unknown:
        raise UserError(f"--status {', '.join(sorted(unknown))}: expected failed, ignored or "
                        "quarantined")
    settings = get_settings()
    engine = inbox.inbox_engine(inbox.inbox_url(settings), settings.database_url)
    with session_scope(engine) as session:
        count = inbox.requeue(session, status, topic)
    console.print(f"{count} deliveries back in the inbox; the next sweep takes them")


# --- run, order, report -----------------------------------------------------------------------


@app.command("run")
@user_errors
def run_cmd(
    as_of: AsOfOpt = None,
    daily: Annotated[bool, typer.Option("--daily", help="Also the daily work: late-parcel "
                                        "watch, birthday offers, loyalty tiers.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Advance all due work as of an instant (default now), through the Prefect sweep flow."""
    from flows import journey
    from flows.parameters import DailyRequest, SweepRequest

    app_engine()
    now = parse_instant(as_of)
    result = (journey.daily(DailyRequest(as_of=now)) if daily
              else journey.sweep(SweepRequest(as_of=now)))
    if as_json:
        print_json(result)
    else:
        show_stage_table(result)


def show_stage_table(result: dict[str, Any]) -> None:
    table = Table(title="journey sweep")
    for column in ("stage", "advanced", "held", "closed", "skipped"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, s in result["stages"].items():
        table.add_row(name, *(str(s[k]) for k in ("advanced", "held", "closed", "skipped")))
    console.print(table)
    sent = ", ".join(f"{k} {v}" for k, v in result["messages"].items())
    console.print(f"messages: {sent or 'none'}")


@app.command("order")
@user_errors
def order_cmd(external_id: str, as_json: JsonFlag = False) -> None:
    """Show one order's journey: state, hold reason, packing, messages, timeline, artifacts."""
    from tasks.store.queries import find_order, order_view

    with session_scope(app_engine()) as session:
        view = without_addresses(order_view(session, find_order(session, external_id)))
    if as_json:
        print_json(view)
    else:
        show_order(view)


def without_addresses(view: dict[str, Any]) -> dict[str, Any]:
    """Hold reasons, timeline details and mail outcomes can quote the customer's address
    (`email_invalid: a..b@x.com`); show it masked, as the Prefect artifacts and forms do."""
    from flows.reporting import mask_emails

    def masked(value: Any) -> Any:
        if isinstance(value, str):
            return mask_emails(value)
        if isinstance(value, dict):
            return {key: masked(item) for key, item in value.items()}
        return [masked(item) for item in value] if isinstance(value, list) else value

    return view | {"hold_reason": masked(view["hold_reason"]),
                   "events": [e | {"detail": masked(e["detail"])} for e in view["events"]],
                   "messages": [m | {"reason": masked(m["reason"])} for m in view["messages"]]}


def show_order(view: dict[str, Any]) -> None:
    title = view["name"] or view["external_id"]
    source = f"{view['source']} {view['external_id']}"
    console.print(f"{title} ({source}): {view['state']}", style="bold")
    if view["hold_reason"]:
        console.print(f"held: {view['hold_reason']}")
    if view["promised_delivery"]:
        console.print(f"promised delivery: {view['promised_delivery']}")
    for item in view["packing"]["instructions"]:
        console.print(f"  pack: [{item.get('kind')}] {item.get('text')}")
    timeline = Table(title="timeline")
    for column in ("at", "event", "actor", "detail"):
        timeline.add_column(column)
    for e in view["events"]:
        change = f"{e['from'] or ''} → {e['to']}" if e["to"] else e["kind"]
        timeline.add_row(e["at"][:19], change, e["actor"], json.dumps(e["detail"])[:80])
    console.print(timeline)
    for m in view["messages"]:
        console.print(f"  mail {m['template']} v{m['version']} ({m['class']}): {m['status']}"
                      + (f" — {m['reason']}" if m["reason"] else ""))
    for a in view["artifacts"]:
        console.print(f"  artifact {a['kind']}: {a['ref']}")
    for s in view["shipments"]:
        console.print(f"  parcel {s['carrier']} {s['tracking_number']}: {s['status']}")
    for e in view["loyalty"]:
        console.print(f"  points {e['points']:+d} {e['kind']} ({e['status']}, rule "
                      f"{e['rule_version']})")


@app.command("report")
@user_errors
def report_cmd(as_json: JsonFlag = False) -> None:
    """Orders by state, holds by reason, messages by status, quarantine by reason."""
    from tasks import inbox
    from tasks.store.queries import report

    with session_scope(app_engine()) as session:
        data = report(session)
    settings = get_settings()
    with session_scope(inbox.inbox_engine(inbox.inbox_url(settings),
                                          settings.database_url)) as session:
        data |= inbox.inbox_summary(session)
    if as_json:
        print_json(data)
    else:
        show_report(data)


def show_report(data: dict[str, dict[str, Any]]) -> None:
    for title, counts in data.items():
        table = Table(title=title.replace("_", " "))
        table.add_column("key")
        table.add_column("count", justify="right")
        for key, count in counts.items():
            table.add_row(key, describe(count))
        console.print(table)


def describe(value: Any) -> str:
    if isinstance(value, dict) and "unexplained" in value:
        return describe_run(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in value.items())
    return str(value)


def describe_run(run: dict[str, Any]) -> str:
    """A manifest in one line: received = processed + quarantined + deferred + duplicates."""
    return (f"{run['at'][:19]}: {run['received']} = {run['processed']} + {run['quarantined']} "
            f"+ {run['deferred']} + {run['duplicates']} (unexplained {run['unexplained']})")


@app.command("artifacts")
@user_errors
def artifacts_cmd(
    external_id: str,
    fetch: Annotated[Path | None, typer.Option("--fetch", help="Save verified copies here.")]
    = None,
    as_json: JsonFlag = False,
) -> None:
    """One order's archived documents and messages; --fetch downloads and verifies them."""
    from tasks.archive import ArchiveError
    from tasks.store.queries import find_order, order_artifacts

    with session_scope(app_engine()) as session:
        items = order_artifacts(session, find_order(session, external_id))
    if fetch is not None:
        archive = runtime().archive
        fetch.mkdir(parents=True, exist_ok=True)
        for item in items:
            try:
                data = archive.get(item["ref"])  # SHA-256 verified on the way back
            except ArchiveError as exc:
                raise UserError(str(exc)) from None
            item["saved_to"] = str(fetch / item["file"])
            (fetch / item["file"]).write_bytes(data)
    if as_json:
        print_json(items)
        return
    for item in items:
        console.print(f"{item['kind']:<14} {item['ref']}" +
                      (f" -> {item['saved_to']}" if "saved_to" in item else ""))


archive_app = typer.Typer(no_args_is_help=True, help="The document and mail archive.")
app.add_typer(archive_app, name="archive")


@archive_app.command("reconcile")
@user_errors
def archive_reconcile_cmd(
    grace_minutes: Annotated[int, typer.Option(min=0, help="Leave objects younger than this: "
                                               "a batch may still be committing.")] = 60,
    dry_run: Annotated[bool, typer.Option(help="List, delete nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete archive objects no row refers to (left by a crash between a write and its commit)."""
    from datetime import timedelta

    from tasks.orphans import reconcile

    written_before = datetime.now(UTC) - timedelta(minutes=grace_minutes)
    with session_scope(app_engine()) as session:
        result = reconcile(session, runtime().archive, written_before, dry_run=dry_run)
    if as_json:
        print_json({**result.as_dict(), "refs": result.removed, "dry_run": dry_run})
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{result.checked} objects checked; {verb} {len(result.removed)} that nothing "
                  f"refers to; {result.too_young} unreferenced but younger than "
                  f"{grace_minutes} min")
    for ref in result.removed:
        console.print(f"  {ref}")


# --- holds ----------------------------------------------------------------------------------


@hold_app.command("list")
@user_errors
def hold_list(as_json: JsonFlag = False) -> None:
    """Orders waiting for an operator, with their reasons (an address in one is masked)."""
    from sqlalchemy import select

    from flows.reporting import mask_emails
    from tasks.store.models import Order

    with session_scope(app_engine()) as session:
        rows = session.execute(
            select(Order.external_id, Order.name, Order.hold_reason)
            .where(Order.state == "on_hold").order_by(Order.id)
        ).all()
    held = [{"external_id": r[0], "name": r[1], "hold_reason": r[2] and mask_emails(r[2])}
            for r in rows]
    if as_json:
        print_json(held)
        return
    table = Table(title=f"{len(held)} orders on hold")
    for column in ("external_id", "name", "hold_reason"):
        table.add_column(column)
    for row in held:
        table.add_row(row["external_id"], row["name"] or "", row["hold_reason"] or "")
    console.print(table)


def decide_hold(external_id: str, decision: str, note: str, actor: str) -> None:
    from tasks.store.queries import find_order
    from tasks.verify import cancel_holds, release_holds

    decide = {"release": release_holds, "cancel": cancel_holds}[decision]
    with session_scope(app_engine()) as session:
        order = find_order(session, external_id)
        if order.state != "on_hold":
            raise UserError(f"order {external_id} is {order.state}, not on hold")
        decide(session, [order.id], datetime.now(UTC), actor=actor, note=note)
    console.print(f"order {external_id}: {decision}d")


NoteOpt = Annotated[str, typer.Option("--note", help="Why; kept in the order's timeline.")]
ActorOpt = Annotated[str, typer.Option("--by", help="Who decided (default: $USER).")]


@hold_app.command("release")
@user_errors
def hold_release(external_id: str, note: NoteOpt = "", by: ActorOpt = "") -> None:
    """Approve a held order: it continues to packing at the next run."""
    decide_hold(external_id, "release", note, by or os.environ.get("USER", "operator"))


@hold_app.command("cancel")
@user_errors
def hold_cancel(external_id: str, note: NoteOpt = "", by: ActorOpt = "") -> None:
    """Cancel a held order."""
    decide_hold(external_id, "cancel", note, by or os.environ.get("USER", "operator"))


# --- quarantine -------------------------------------------------------------------------------


@quarantine_app.command("list")
@user_errors
def quarantine_list(as_json: JsonFlag = False) -> None:
    """Open quarantine entries with their reasons."""
    from sqlalchemy import select

    from tasks.store.models import Quarantine

    with session_scope(app_engine()) as session:
        rows = list(session.scalars(
            select(Quarantine).where(Quarantine.status == "open").order_by(Quarantine.id)
        ))
        entries = [
            {"id": q.id, "kind": q.kind, "source": q.source, "external_id": q.external_id,
             "origin": q.origin, "reasons": q.reasons}
            for q in rows
        ]
    if as_json:
        print_json(entries)
        return
    table = Table(title=f"{len(entries)} records in quarantine")
    for column in ("id", "kind", "external_id", "origin", "reasons"):
        table.add_column(column)
    for e in entries:
        reasons = "; ".join(f"{r.get('field')}: {r.get('reason')}" for r in e["reasons"])
        table.add_row(str(e["id"]), e["kind"], e["external_id"] or "", e["origin"] or "", reasons)
    console.print(table)


@quarantine_app.command("show")
@user_errors
def quarantine_show(entry_id: int) -> None:
    """One entry: where it came from, why, and the record exactly as received."""
    from tasks.intake.release import get_entry

    with session_scope(app_engine()) as session:
        e = get_entry(session, entry_id)
        print_json({"id": e.id, "kind": e.kind, "source": e.source, "external_id": e.external_id,
                    "origin": e.origin, "status": e.status, "reasons": e.reasons,
                    "created_at": e.created_at, "released_at": e.released_at,
                    "payload": e.payload})


@quarantine_app.command("release")
@user_errors
def quarantine_release(
    entry_id: int,
    fixed: Annotated[Path | None, typer.Option("--fixed", help="File with the corrected record.")]
    = None,
    as_of: AsOfOpt = None,
) -> None:
    """Re-validate an entry (or its corrected version) and feed it back in; twice is a no-op."""
    from tasks.intake.release import release

    with session_scope(app_engine()) as session:
        outcome = release(session, entry_id, parse_instant(as_of), fixed, rt=runtime())
    if outcome.status == "still_rejected":
        reasons = "; ".join(f"{r.get('field')}: {r.get('reason')}" for r in outcome.reasons)
        raise UserError(f"quarantine entry {entry_id} still rejected: {reasons}")
    console.print(f"quarantine entry {entry_id}: {outcome.status.replace('_', ' ')}")


# --- service cases -----------------------------------------------------------------------------


@case_app.command("list")
@user_errors
def case_list(as_json: JsonFlag = False) -> None:
    """Open service cases with their proposed resolution."""
    from tasks.aftercare.service import open_cases

    with session_scope(app_engine()) as session:
        cases = open_cases(session)
    if as_json:
        print_json(cases)
        return
    table = Table(title=f"{len(cases)} open service cases")
    for column in cases[0] if cases else ("id",):
        table.add_column(column)
    for case in cases:
        table.add_row(*(str(value) for value in case.values()))
    console.print(table)


@case_app.command("decide")
@user_errors
def case_decide(
    case_id: int,
    decision: Annotated[str, typer.Option("--decision",
                                          help="replacement | refund | keep_with_credit")],
    note: NoteOpt = "",
    refund: Annotated[str | None, typer.Option("--refund", help="Refund amount (refund only; "
                                               "default the order total).")] = None,
    by: ActorOpt = "",
) -> None:
    """Decide a case: the customer is told, and a refund reverses the order's points exactly."""
    from decimal import Decimal, InvalidOperation

    from tasks.aftercare.service import ServiceError, settle_case

    try:
        amount = Decimal(refund) if refund is not None else None
    except InvalidOperation:
        raise UserError(f"--refund {refund!r} is not an amount") from None
    rt, now = runtime(), datetime.now(UTC)
    with session_scope(app_engine()) as session:
        try:
            actor = by or os.environ.get("USER", "operator")
            outcome = settle_case(session, case_id, decision, actor, note, now, rt,
                                  refund_amount=amount)
        except ServiceError as exc:
            raise UserError(str(exc)) from None
    console.print(f"case {case_id}: {outcome.decision}" + ("" if outcome.changed
                                                           else " (already decided)"))


@app.command("unsubscribe")
@user_errors
def unsubscribe_cmd(token: str) -> None:
    """Suppress the address an unsubscribe link stands for (what its one-click POST does).

    TOKEN is the token or the whole link: a /u/ link or an older /unsubscribe?token= one.
    """
    from tasks.messaging.unsubscribe import UnsubscribeError, unsubscribe

    with session_scope(app_engine()) as session:
        try:
            address = unsubscribe(session, token, datetime.now(UTC), source="cli",
                                  secret_key=runtime().settings.secret_key)
        except UnsubscribeError as exc:
            raise UserError(str(exc)) from None
    console.print(f"unsubscribed {address}")


@app.command("erase")
@user_errors
def erase_cmd(
    email: Annotated[str, typer.Option("--email", help="The address to forget.")],
    by: ActorOpt = "",
    as_json: JsonFlag = False,
) -> None:
    """Erase a customer: anonymise them and their archived papers; keep a hashed suppression."""
    from dataclasses import asdict

    from tasks.privacy import ErasureError, erase_customer
    from tasks.store.db import session_factory

    with session_factory(app_engine())() as session:
        try:
            outcome = erase_customer(session, email, datetime.now(UTC), runtime(),
                                     actor=by or os.environ.get("USER", "operator"))
        except ErasureError as exc:
            raise UserError(str(exc)) from None
    if as_json:
        print_json(asdict(outcome))
    elif outcome.already_erased:
        console.print("already erased: nothing left to do")
    else:
        console.print(f"erased: {outcome.orders} orders, {outcome.messages} messages, "
                      f"{outcome.archive_rewritten} archive bundles rewritten"
                      + (f"; {outcome.undelivered} orders were still under way"
                         if outcome.undelivered else ""))


# --- Prefect: deploy and the local stack -------------------------------------------------------


@app.command("deploy")
@user_errors
def deploy_cmd() -> None:
    """Bootstrap the Prefect server at PREFECT_API_URL and apply infra/prefect.yaml (rerunnable)."""
    import httpx

    from infra.stack import StackError, deploy

    try:
        deploy(report=console.print)
    except StackError as exc:
        raise UserError(str(exc)) from None
    except httpx.HTTPError as exc:  # includes a server that is not there
        raise UserError(f"Prefect API at {os.environ.get('PREFECT_API_URL')}: {exc}") from None


@app.command("edge")
@user_errors
def edge_cmd(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; put a TLS proxy "
                                      "in front before opening it beyond this machine.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    proxy_headers: Annotated[bool, typer.Option(
        "--proxy-headers", help="Trust X-Forwarded-For from --forwarded-allow-ips (behind a "
        "proxy: rate limits and logs then see the real client).")] = False,
    forwarded_allow_ips: Annotated[str | None, typer.Option(
        "--forwarded-allow-ips", help="Proxy addresses whose forwarded headers are trusted.")]
    = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Edge processes sharing "
                                         "the port (one per core is plenty).")] = 1,
) -> None:
    """The edge: POST /webhooks/shopify, /aftership, /ses into the inbox; /healthz, /readyz."""
    from flows.edge import serve

    app_engine()
    serve(host, port, proxy_headers, forwarded_allow_ips, workers)


@app.command("server")
@user_errors
def server_cmd(
    port: Annotated[int, typer.Option("--port", help="Port for the Prefect UI and API.")] = 4200,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Process workers to start.")]
    = 1,
    prefect_db: Annotated[str | None, typer.Option(
        "--prefect-db", help="PostgreSQL URL for Prefect's own database (default: SQLite; or "
        "$JOURNEYS_PREFECT_DATABASE_URL).")] = None,
    edge_port: Annotated[int, typer.Option(
        "--edge-port", help="Port of the edge (webhooks in) on 127.0.0.1; 0: no edge.")] = 8000,
) -> None:
    """Prefect server, deployments, workers and the edge on this machine, until Ctrl-C."""
    from infra.stack import StackError, run_stack

    try:
        run_stack(port=port, prefect_db_url=prefect_db, workers=workers, report=console.print,
                  edge_port=edge_port or None)
    except StackError as exc:
        raise UserError(str(exc)) from None


# --- demo -------------------------------------------------------------------------------------


@app.command("demo")
@user_errors
def demo_cmd(
    orders: Annotated[int, typer.Option("--orders", min=1, help="How many orders.")] = 300,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the synthetic data.")] = 7,
) -> None:
    """Generate a seeded catalog and orders, and run them through the journey."""
    from flows.demo import run_demo

    run_demo(orders, seed, console)


@app.command("simulate")
@user_errors
def simulate_cmd(
    days: Annotated[int, typer.Option("--days", min=1, help="Days to simulate.")] = 30,
    orders: Annotated[int, typer.Option("--orders", min=1, help="Orders on day 0.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data and behaviour.")] = 7,
    start: Annotated[str | None, typer.Option("--start", help="ISO 8601 first day "
                                              "(default today).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a seeded store day by day on a frozen clock; exit 1 if any rule is violated."""
    from flows.simulate import simulate

    app_engine()
    result = simulate(days, orders, seed, parse_instant(start) if start else None)
    if as_json:
        print_json(result)
    else:
        for address, entries in result["calendar"].items():
            console.print(address, style="bold")
            for entry in entries:
                console.print(f"  {entry}")
        console.print(f"{len(result['violations'])} rule violations")
        for violation in result["violations"]:
            console.print(f"  {violation}", style="red")
    if result["violations"]:
        raise typer.Exit(1)


@app.command("bench")
@user_errors
def bench_cmd(
    orders: Annotated[list[int], typer.Option("--orders", min=1, help="Orders to run through "
                      "the journey; repeat for several sizes (e.g. 10000 and 100000).")] = [1000],  # noqa: B006
    seed: Annotated[int, typer.Option("--seed", help="Seed for the synthetic store.")] = 7,
    batch: Annotated[int, typer.Option("--batch-size", min=1, help="Orders per batch.")] = 1000,
    database: Annotated[str | None, typer.Option("--database", help="An EMPTY database to run "
                        "on (e.g. PostgreSQL); default: SQLite in the work folder.")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Folder for the bench's stores "
                       "(emptied first).")] = Path("var/bench"),
    baseline: Annotated[bool, typer.Option("--baseline", help="Also run the naive per-order "
                        "design (at --baseline-orders) and extrapolate it.")] = False,
    baseline_orders: Annotated[int, typer.Option("--baseline-orders", min=10)] = 1000,
    latency: Annotated[int, typer.Option("--latency", min=0, help="Also time this many single "
                       "order journeys through a Prefect server and worker.")] = 0,
    floor: Annotated[bool, typer.Option("--floor/--no-floor", help="Measure the floor.")] = True,
    webhooks: Annotated[int, typer.Option("--webhooks", min=0, help="Also load a fresh edge "
                        "with signed webhooks for this many seconds: accepted/s, "
                        "acknowledgement latency, nothing lost (wrk when installed).")] = 0,
    realtime: Annotated[int, typer.Option("--realtime", min=0, help="Also post this many order "
                        "webhooks, one a second, to a stack with its edge and real-time worker: "
                        "seconds from webhook to confirmation sent.")] = 0,
    pages: Annotated[int, typer.Option("--pages", min=0, help="Also serve the customer pages "
                     "of the journey's store from an edge with 2 workers under load for this "
                     "many seconds: pages/s and latency.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Measure the journey: N seeded orders through every stage, against the floor (and the
    naive design with --baseline); prints the figures and which targets are met."""
    from flows.bench.run import bench
    from flows.bench.story import BenchError

    try:
        result = bench(orders, seed, workdir, database, batch, floor,
                       baseline_orders if baseline else None, latency or None, webhooks or None,
                       realtime or None, pages or None)
    except BenchError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        print_json(result)
    else:
        show_bench(result)
    if any(run["accounting"]["lost"] for run in result["runs"]):
        raise typer.Exit(1)


def show_bench(result: dict[str, Any]) -> None:
    runs = Table(title="journeys bench")
    for name in ("orders", "db", "wall s", "CPU s", "orders/s", "peak RSS MB", "task runs",
                 "PUTs", "floor s", "efficiency", "lost"):
        runs.add_column(name, justify="right")
    for run in result["runs"]:
        floor = run.get("floor", {}).get("seconds")
        runs.add_row(f"{run['orders']:,}", run["database"], f"{run['wall_seconds']:.1f}",
                     f"{run['cpu_seconds']:.1f}", f"{run['orders_per_second']:.0f}",
                     f"{run['peak_rss_mb']:.0f}", str(run["task_runs"]),
                     str(run["archive_puts"]), "—" if floor is None else f"{floor:.1f}",
                     str(run.get("efficiency", "—")), str(run["accounting"]["lost"]))
    console.print(runs)
    stages = Table(title="seconds per stage (Prefect task runs)")
    stages.add_column("stage")
    for run in result["runs"]:
        stages.add_column(f"{run['orders']:,}", justify="right")
    names = sorted({name for run in result["runs"] for name in run["stage_seconds"]})
    for name in names:
        stages.add_row(name, *(f"{run['stage_seconds'].get(name, 0):.2f}"
                               for run in result["runs"]))
    console.print(stages)
    if baseline := result.get("baseline"):
        console.print(f"naive baseline: {baseline['orders']:,} orders in "
                      f"{baseline['wall_seconds']:.0f} s ({baseline['seconds_per_order']:.3f} s "
                      f"per order, {baseline['task_runs']:,} task runs, "
                      f"{baseline['archive_puts']:,} PUTs); "
                      f"{baseline['extrapolated_seconds']:,.0f} s at "
                      f"{baseline['extrapolated_to']:,}")
    if latency := result.get("latency"):
        warm, cold = latency["latency_s"], latency["cold_start_s"]
        console.print(f"one order, {latency['runs']} runs: confirmation p50 {warm['p50']} s, "
                      f"p95 {warm['p95']} s after the run started; cold start p50 {cold['p50']} s")
    if hooks := result.get("webhooks"):
        ack = hooks["ack_ms"]
        console.print(f"edge ({hooks['database']}, {hooks['generator']}): {hooks['accepted']} "
                      f"webhooks accepted, {hooks['accepted_per_second']}/s; acknowledged p50 "
                      f"{ack['p50']} ms, p99 {ack['p99']} ms; stored {hooks['stored']}, "
                      f"lost {hooks['lost']}")
    if realtime := result.get("realtime"):
        seconds = realtime["webhook_to_confirmation_s"]
        console.print(f"real time: {realtime['posted']} order webhooks, {realtime['confirmed']} "
                      f"confirmed: webhook → confirmation sent p50 {seconds['p50']} s, p95 "
                      f"{seconds['p95']} s, max {seconds['max']} s; not confirmed (held): "
                      f"{len(realtime['not_confirmed'])}")
    if served := result.get("pages"):
        ms = served["ms"]
        console.print(f"customer pages ({served['database']}, {served['workers']} edge workers, "
                      f"{served['generator']}): {served['served']} served, "
                      f"{served['pages_per_second']}/s; p50 {ms['p50']} ms, p95 {ms['p95']} ms, "
                      f"p99 {ms['p99']} ms; failed {served['failed']}")
    verdicts = Table(title="targets")
    for name in ("target", "figure", "status"):
        verdicts.add_column(name)
    for row in result["targets"]:
        verdicts.add_row(row["target"], row["figure"], row["status"])
    console.print(verdicts)


# --- reviews ----------------------------------------------------------------------------------

reviews_app = typer.Typer(no_args_is_help=True, help="Product reviews customers wrote on /r/.")
app.add_typer(reviews_app, name="reviews")


@reviews_app.command("export")
@user_errors
def reviews_export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="google (Google's product review feed "
                                     "XML) | json | csv.")] = "google",
    output: Annotated[Path | None, typer.Option("--output", help="Write to this file "
                                                "(default: standard output).")] = None,
) -> None:
    """Every approved review (the whole set each time: Google replaces its copy per feed)."""
    from tasks.storefront import reviews

    if fmt not in reviews.EXPORTS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(reviews.EXPORTS)}")
    cfg = runtime().config
    with session_scope(app_engine()) as session:
        approved = reviews.approved_reviews(session, cfg)
    data = (reviews.google_feed(approved, cfg.store.name) if fmt == "google"
            else (reviews.as_json(approved) if fmt == "json" else reviews.as_csv(approved))
            .encode("utf-8"))
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        sys.stderr.write(f"{len(approved)} approved reviews written to {output}\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
