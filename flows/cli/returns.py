"""`journeys returns`: list returns, decide requested ones, store a label, receive parcels.

The same operations as the Prefect form `returns-review` (tasks/operations.py); a return is
named by its RMA (as printed on the parcel, any case).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import (
    ActorOpt,
    JsonFlag,
    NoteOpt,
    UserError,
    app_engine,
    console,
    notify,
    operator,
    print_json,
    runtime,
    session_scope,
    user_errors,
)

returns_app = typer.Typer(no_args_is_help=True, help="Returns: list, decide, label, receive.")

MessageOpt = Annotated[str, typer.Option("--message", help=(
    "reject: the reason the customer reads (required)."))]
StatusOpt = Annotated[str | None, typer.Option("--status", help=(
    "Only returns in this status (requested, approved, received, refunded ...)."))]


def return_ids(session, rmas: list[str]) -> list[int]:
    from tasks.store.queries import ReturnNotFound, returns_by_rma

    try:
        return [ret.id for ret in returns_by_rma(session, rmas)]
    except ReturnNotFound as exc:
        raise UserError(str(exc)) from None


@returns_app.command("list")
@user_errors
def returns_list(status: StatusOpt = None, as_json: JsonFlag = False) -> None:
    """Returns, oldest first: RMA, order, status, what comes back and why."""
    from tasks.store.queries import return_rows

    with session_scope(app_engine()) as session:
        rows = [{"rma": ret.rma, "order": order.name or order.external_id, "status": ret.status,
                 "resolution": ret.resolution, "reason": ret.reason,
                 "value": f"{ret.goods_value} {order.currency}",
                 "units": sum(line.quantity for line in ret.lines),
                 "requested_at": ret.requested_at.isoformat()[:16]}
                for ret, order in return_rows(session, status)]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} returns" + (f" {status}" if status else ""))
    for column in ("rma", "order", "status", "resolution", "reason", "value", "units",
                   "requested_at"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in row))
    console.print(table)


@returns_app.command("decide")
@user_errors
def returns_decide(
    rma: str,
    decision: Annotated[str, typer.Argument(help="approve | reject | credit (keep with credit)")],
    message: MessageOpt = "",
    note: NoteOpt = "",
    by: ActorOpt = "",
) -> None:
    """Decide a requested return; the customer is told (a rejection with --message)."""
    from tasks import operations

    with session_scope(app_engine()) as session:
        applied = operations.decide_returns(session, return_ids(session, [rma]), decision,
                                            datetime.now(UTC), runtime(), operator(by), note,
                                            message)
    notify(applied.changes)
    done = applied.outcome["returns"]
    console.print(f"return {rma.upper()}: {decision}" + ("" if done else
                                                         " (not requested: unchanged)"))


@returns_app.command("label")
@user_errors
def returns_label(
    rma: str,
    url: Annotated[str | None, typer.Option("--url", help="The label's https URL.")] = None,
    pdf: Annotated[Path | None, typer.Option("--pdf", help="The label as a PDF file.",
                                             exists=True, dir_okay=False)] = None,
    by: ActorOpt = "",
) -> None:
    """Store the return label of an approved return (the carrier's); the customer is told."""
    from tasks import operations
    from tasks.archive import ArchiveError

    data = pdf.read_bytes() if pdf else None
    with session_scope(app_engine()) as session:
        [return_id] = return_ids(session, [rma])
        try:
            applied = operations.attach_return_label(session, return_id, datetime.now(UTC),
                                                     runtime(), operator(by), url=url, pdf=data)
        except ArchiveError as exc:
            raise UserError(f"the label could not be archived: {exc}") from None
    console.print(f"return {rma.upper()}: label {applied.outcome['label']}")


@returns_app.command("receive")
@user_errors
def returns_receive(rmas: list[str], by: ActorOpt = "") -> None:
    """The parcels arrived: each approved return is refunded or exchanged at once."""
    from tasks import operations

    with session_scope(app_engine()) as session:
        applied = operations.receive_returns(session, return_ids(session, rmas),
                                             datetime.now(UTC), runtime(), operator(by))
    notify(applied.changes)
    counts = applied.outcome
    console.print(f"received {counts['received']}, refunded {counts['refunded']}, "
                  f"exchanged {counts['exchanged']}")
