"""`journeys reviews`: product reviews customers wrote on /r/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import UserError, app_engine, runtime, session_scope, user_errors

reviews_app = typer.Typer(no_args_is_help=True, help="Product reviews customers wrote on /r/.")


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
