"""What every command module shares: the root app, the console, options, errors, output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's temporary server creates its database on first use; 20 s is not enough on a busy
# two-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from tasks.runtime import Runtime
    from tasks.settings import Settings

# Startup time: `journeys --help`, `report` or `order` must not wait for Prefect, Great
# Expectations, pandas or boto3 (seconds of imports). This module and the command modules import
# only typer and rich at the top; everything else is imported by the command that uses it
# (tests/flows/test_cli.py checks what `journeys report` loads).

HELP = "`journeys` command line: thin commands over the flows and the store's queries."
app = typer.Typer(no_args_is_help=True, add_completion=False, help=HELP)

console = Console(markup=False)  # customer text like "[/x]" must print as-is, never as markup
T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
AsOfOpt = Annotated[
    str | None, typer.Option("--as-of", help="ISO 8601 instant to act as of (default: now).")
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="Override format detection (shopify|canonical|csv).")
]
NoteOpt = Annotated[str, typer.Option("--note", help="Why; kept in the order's timeline.")]
ActorOpt = Annotated[str, typer.Option("--by", help="Who decided (default: $USER).")]


class UserError(Exception):
    """Something the user can fix; printed as one line, no traceback."""


# What a user can fix, printed as one line with exit code 2: (module, class). Matched only
# when the module is loaded — an error class whose module no code imported cannot have been
# raised — so catching them costs a command none of their (heavy) imports.
ONE_LINE_ERRORS = (
    ("tasks.intake.formats.common", "IntakeError"),
    ("tasks.intake.release", "QuarantineNotFound"),
    ("tasks.operations", "OperationRefused"),
    ("tasks.quality.gate", "GateFailed"),
    ("tasks.settings", "SecretUnavailable"),
    ("tasks.store.queries", "OrderNotFound"),
    ("tasks.config.base", "ConfigError"),
)


def user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn known input and config problems into a one-line message and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            message = one_line(exc)
            if message is None:
                raise
        sys.stderr.write(f"journeys: {message}\n")  # one line, never wrapped by rich
        raise typer.Exit(2)

    return wrapper


def one_line(exc: Exception) -> str | None:
    """The one-line message for an error the user can fix; None for anything else (a bug)."""
    if isinstance(exc, UserError) or is_loaded_error(exc, ONE_LINE_ERRORS):
        return str(exc)
    if is_loaded_error(exc, (("pydantic", "ValidationError"),)):  # a JOURNEYS_* setting
        first = exc.errors()[0]  # type: ignore[attr-defined]
        return f"setting JOURNEYS_{str(first['loc'][0]).upper()}: {first['msg']}"
    if is_loaded_error(exc, (("sqlalchemy.exc", "ArgumentError"),)):
        return f"JOURNEYS_DATABASE_URL: {exc}"
    return None


def is_loaded_error(exc: Exception, classes: tuple[tuple[str, str], ...]) -> bool:
    return any(isinstance(exc, getattr(sys.modules[module], name))
               for module, name in classes if module in sys.modules)


def runtime() -> Runtime:
    """The flows' runtime: the same settings and secrets (Secret blocks too) as a worker's."""
    from flows.common import runtime as shared_runtime

    return shared_runtime()


def app_engine() -> Engine:
    """The app database, migrated to the newest schema on first use.

    Not flows.common.app_engine, on purpose: importing flows.common imports Prefect (seconds
    a command like `journeys order` does not need), and its cached engine would outlive a
    changed JOURNEYS_DATABASE_URL (tests run many commands in one process). engine_for
    caches the engine per URL; ensure_schema is quick once the schema is current.
    """
    from tasks.store.db import engine_for
    from tasks.store.migrate import ensure_schema

    engine = engine_for(get_settings().database_url)
    ensure_schema(engine)
    return engine


def get_settings() -> Settings:
    """The process settings (JOURNEYS_*), imported on first use."""
    from tasks.settings import get_settings as settings

    return settings()


def session_scope(engine: Engine) -> AbstractContextManager[Session]:
    """tasks.store.db.session_scope, imported on first use (SQLAlchemy's ORM takes a while)."""
    from tasks.store.db import session_scope as scope

    return scope(engine)


def operator(by: str) -> str:
    """Who decides: --by, else the login name."""
    return by or os.environ.get("USER", "operator")


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


def show_counts(title: str, counts: dict[str, int], as_json: bool) -> None:
    if as_json:
        print_json(counts)
        return
    table = Table(title=title)
    for name in counts:
        table.add_column(name, justify="right")
    table.add_row(*(str(v) for v in counts.values()))
    console.print(table)


def notify(changes: list[dict[str, Any]]) -> None:
    """Announce order state changes as the flows do (journeys.order.*), best-effort: the
    change is committed and in the timeline; a Prefect API that is not there must not turn
    a done decision into a failed command."""
    if not changes:
        return
    try:
        from flows.order_events import emit_state_changes

        emit_state_changes(changes, outside_runs=True)
    except Exception as exc:  # noqa: BLE001 - any failure to notify is only worth a warning
        sys.stderr.write(f"journeys: warning: order events not sent ({exc})\n")
