"""`journeys ingest`: load catalog, orders, parcels, feedback, webhooks and bounces."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import (
    AsOfOpt,
    FormatOpt,
    JsonFlag,
    UserError,
    app_engine,
    console,
    get_settings,
    parse_instant,
    print_json,
    runtime,
    session_scope,
    show_counts,
    user_errors,
)
from flows.cli.prefect_api import prefect_api

ingest_app = typer.Typer(no_args_is_help=True, help="Load catalog and orders from files.")

def ingest_file(kind: str, path: Path, fmt: str | None, now: datetime) -> dict[str, int]:
    """Through the ingest flow: quality gate per batch, one transaction per batch, manifest."""
    from tasks.intake.writers import read

    # Refuse an unreadable file before a flow run (and a Prefect server) is started for it.
    next(iter(read(kind, path, fmt)), None)
    app_engine()
    with prefect_api("flows.intake"):
        from flows.intake import ingest
        from flows.parameters import IngestRequest

        return ingest(IngestRequest(kind=kind, source=str(path), format=fmt, as_of=now))


# One command body for every kind read from a file with a detectable format; each kind keeps
# its own name (`journeys ingest orders PATH`) and help. Kinds: tasks/intake/writers.KINDS
# (tests/flows/test_cli.py checks each is one; not here: importing intake slows every command).
FILE_KINDS = {
    "orders": ("orders", "Ingest orders: Shopify order JSON Lines, canonical JSON Lines, or CSV "
               "(one row per line)."),
    "products": ("products", "Ingest the catalog: Shopify product JSON Lines or CSV "
                 "(sku,title,category,tags,...)."),
    "shipments": ("shipments", "Ingest shipments: Shopify fulfillments (or orders with "
                  "fulfillments[]) or canonical."),
    "events": ("tracking events", "Ingest tracking events: AfterShip webhook bodies or "
               "canonical events (JSON Lines)."),
}


def ingest_kind_command(kind: str, title: str) -> Callable[..., None]:
    """`journeys ingest KIND PATH [--format F] [--as-of T] [--json]` for one KIND."""

    def ingest_kind_cmd(
        path: Path, fmt: FormatOpt = None, as_of: AsOfOpt = None, as_json: JsonFlag = False
    ) -> None:
        counts = ingest_file(kind, path, fmt, parse_instant(as_of))
        show_counts(f"{title} from {path}", counts, as_json)

    return ingest_kind_cmd


for _kind, (_title, _help) in FILE_KINDS.items():
    ingest_app.command(_kind, help=_help)(user_errors(ingest_kind_command(_kind, _title)))


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
    with prefect_api("flows.journey"):
        from flows.journey import drain
        from flows.parameters import SweepRequest

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
