"""`journeys artifacts` and `journeys archive`: the document and mail archive."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import (
    JsonFlag,
    UserError,
    app,
    app_engine,
    console,
    print_json,
    runtime,
    session_scope,
    user_errors,
)

archive_app = typer.Typer(no_args_is_help=True, help="The document and mail archive.")


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
