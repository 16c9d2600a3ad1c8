"""`journeys documents` and `journeys print-batch`: papers a browser or a printer can open.

The archive keeps documents inside zip bundles (`file:///…/pack-….zip#…/packing_slip.html`),
which no browser opens: these commands write them out as plain HTML and PDF files.
"""

from __future__ import annotations

import os
import sys
import webbrowser
from datetime import date, datetime
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

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

OpenFlag = Annotated[bool, typer.Option("--open", help="Open the PDF with the system's viewer "
                                        "(nothing happens on a machine without a display).")]


@app.command("documents")
@user_errors
def documents_cmd(
    external_id: str,
    out: Annotated[Path, typer.Option("--out", help="Folder to write the files into.")]
    = Path("documents"),
    open_pdf: OpenFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """One order's packing slip, invoice and credit notes as HTML and PDF files."""
    from tasks.archive import ArchiveError
    from tasks.pack import member_folder
    from tasks.print_batch import export_order_documents
    from tasks.store.queries import find_order

    rt = runtime()
    with session_scope(app_engine()) as session:
        order = find_order(session, external_id)
        try:
            entries = export_order_documents(session, rt.archive, order,
                                             out / member_folder(order))
        except ArchiveError as exc:
            raise UserError(str(exc)) from None
    if not entries:
        raise UserError(f"order {external_id} has no documents yet (they are made at packing)")
    if as_json:
        print_json(entries)
    else:
        for entry in entries:
            files = entry["pdf"] and f"{entry['pdf']}  {entry['html']}"
            console.print(f"{entry['kind']:<13} {files or entry['link']}", soft_wrap=True)
    if open_pdf:
        open_files([Path(e["pdf"]) for e in entries if e["pdf"]])


@app.command("print-batch")
@user_errors
def print_batch_cmd(
    day: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD in the store's time "
                                            "zone; default: today.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="The PDF file to write.")] = None,
    open_pdf: OpenFlag = False,
) -> None:
    """One PDF of a day's packing slips, in packing order (orders cancelled since left out)."""
    from tasks.archive import ArchiveError
    from tasks.print_batch import day_slips, slips_pdf

    rt = runtime()
    wanted = parse_day(day, rt.config.store.timezone)
    with session_scope(app_engine()) as session:
        refs = day_slips(session, wanted, rt.config.store.timezone)
    if not refs:
        console.print(f"No packing slips on {wanted.isoformat()} ({rt.config.store.timezone}).")
        return
    try:
        pdf = slips_pdf(rt.archive, refs)
    except ArchiveError as exc:
        raise UserError(str(exc)) from None
    target = out or Path(f"print-batch-{wanted.isoformat()}.pdf")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pdf)
    console.print(f"{len(refs)} packing slips of {wanted.isoformat()} -> {target}",
                  soft_wrap=True)
    if open_pdf:
        open_files([target])


def parse_day(value: str | None, timezone: str) -> date:
    if value is None:
        return datetime.now(ZoneInfo(timezone)).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UserError(f"--date {value!r} is not a date (YYYY-MM-DD)") from None


def open_files(paths: list[Path]) -> None:
    """Each file in the system's viewer; without a display, say where the files are instead
    (a console browser must not take over the terminal, and a server has no viewer)."""
    if not has_display():
        console.print("No display here: open the file(s) above on a machine with one.")
        return
    for path in paths:
        if not webbrowser.open(path.resolve().as_uri()):
            console.print(f"No viewer could open {path}.")


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
