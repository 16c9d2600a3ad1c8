"""`journeys hold`, `quarantine` and `case`: operator decisions (tasks/operations.py)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import (
    ActorOpt,
    AsOfOpt,
    JsonFlag,
    NoteOpt,
    UserError,
    app_engine,
    console,
    notify,
    operator,
    parse_instant,
    print_json,
    runtime,
    user_errors,
)
from tasks.store.db import session_scope

hold_app = typer.Typer(no_args_is_help=True, help="Orders on hold: list, release, cancel.")
quarantine_app = typer.Typer(no_args_is_help=True, help="Records that could not be accepted.")
case_app = typer.Typer(no_args_is_help=True, help="Service cases: list and decide.")


@hold_app.command("list")
@user_errors
def hold_list(as_json: JsonFlag = False) -> None:
    """Orders waiting for an operator, with their reasons (an address in one is masked)."""
    from flows.reporting import mask_emails
    from tasks.store.queries import hold_list as held_orders

    with session_scope(app_engine()) as session:
        held = held_orders(session)
    held = [row | {"hold_reason": row["hold_reason"] and mask_emails(row["hold_reason"])}
            for row in held]
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
    """As the review-holds form does (tasks/operations.py), then the same order events."""
    from tasks import operations

    with session_scope(app_engine()) as session:
        applied = operations.decide_hold(session, external_id, decision, datetime.now(UTC),
                                         actor, note, rt=runtime())
    notify(applied.changes)
    console.print(f"order {external_id}: {decision}d")


def cancel_order(external_id: str, by: str, reason: str, as_json: bool = False) -> None:
    """`journeys order cancel`: as the cancel-order form does, then the same order events."""
    from tasks import operations

    with session_scope(app_engine()) as session:
        applied = operations.cancel_order(session, external_id, datetime.now(UTC), runtime(),
                                          operator(by), reason)
    notify(applied.changes)
    if as_json:
        print_json(applied.outcome)
        return
    console.print(f"order {applied.outcome['order']}: {applied.outcome['outcome']}")
    if applied.outcome.get("do_not_ship"):
        console.print("It was packed: the packer must not ship it (the sweep summary's "
                      "Do not ship list has it).")


@hold_app.command("release")
@user_errors
def hold_release(external_id: str, note: NoteOpt = "", by: ActorOpt = "") -> None:
    """Approve a held order: it continues to packing at the next run."""
    decide_hold(external_id, "release", note, operator(by))


@hold_app.command("cancel")
@user_errors
def hold_cancel(external_id: str, note: NoteOpt = "", by: ActorOpt = "") -> None:
    """Cancel a held order."""
    decide_hold(external_id, "cancel", note, operator(by))


@quarantine_app.command("list")
@user_errors
def quarantine_list(as_json: JsonFlag = False) -> None:
    """Open quarantine entries with their reasons."""
    from tasks.store.queries import open_quarantine

    with session_scope(app_engine()) as session:
        entries = open_quarantine(session)
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
    from tasks import operations

    with session_scope(app_engine()) as session:
        applied = operations.release_quarantine(session, entry_id, parse_instant(as_of),
                                                runtime(), fixed)
    notify(applied.changes)
    report_settled(entry_id, applied.outcome)


@quarantine_app.command("fix")
@user_errors
def quarantine_fix(
    entry_id: int,
    record: Annotated[Path, typer.Option(
        "--record", help="File with the corrected record, as its source spells it (one JSON "
        "line, or CSV with its header); - reads standard input.")],
    by: ActorOpt = "",
    as_of: AsOfOpt = None,
) -> None:
    """Feed in a corrected record; refused again, it stays quarantined as a new entry with
    the new reasons (this one is marked replaced), so nothing is lost."""
    from tasks import operations

    text = sys.stdin.read() if str(record) == "-" else read_text(record)
    with session_scope(app_engine()) as session:
        applied = operations.fix_quarantine(session, entry_id, text, parse_instant(as_of),
                                            runtime(), operator(by))
    notify(applied.changes)
    report_settled(entry_id, applied.outcome)


@quarantine_app.command("dismiss")
@user_errors
def quarantine_dismiss(
    entry_id: int,
    reason: Annotated[str, typer.Option("--reason", help="Why it is dropped; kept with the "
                                        "entry.")],
    by: ActorOpt = "",
) -> None:
    """Drop an entry for good (a test order, a record nobody will correct)."""
    from tasks import operations

    with session_scope(app_engine()) as session:
        applied = operations.dismiss_quarantine(session, entry_id, reason, datetime.now(UTC),
                                                operator(by))
    report_settled(entry_id, applied.outcome)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def report_settled(entry_id: int, outcome: dict) -> None:
    """One line per outcome; a record refused again is an error naming the entry now holding it."""
    status, reasons = outcome["status"], outcome["reasons"]
    if status == "still_rejected":
        reasons = "; ".join(f"{r.get('field')}: {r.get('reason')}" for r in reasons)
        now_in = f" (now quarantine entry {outcome['replaced_by']})" if outcome.get(
            "replaced_by") else ""
        raise UserError(f"quarantine entry {entry_id} still rejected{now_in}: {reasons}")
    console.print(f"quarantine entry {entry_id}: {status.replace('_', ' ')}")


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

    from tasks import operations
    from tasks.aftercare.service import ServiceError

    try:
        amount = Decimal(refund) if refund is not None else None
    except InvalidOperation:
        raise UserError(f"--refund {refund!r} is not an amount") from None
    rt, now = runtime(), datetime.now(UTC)
    with session_scope(app_engine()) as session:
        try:
            applied = operations.decide_case(session, case_id, decision, now, rt, operator(by),
                                             note, amount)
        except ServiceError as exc:
            raise UserError(str(exc)) from None
    notify(applied.changes)
    outcome = applied.outcome
    console.print(f"case {case_id}: {outcome['decision']}" + ("" if outcome["changed"]
                                                              else " (already decided)"))
