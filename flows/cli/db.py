"""`journeys db`: the database schema."""

from __future__ import annotations

import typer

from flows.cli.common import console, get_settings, user_errors

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


@db_app.command("upgrade")
@user_errors
def db_upgrade() -> None:
    """Apply database migrations up to the newest schema."""
    from tasks.store.db import engine_for
    from tasks.store.migrate import upgrade

    upgrade(engine_for(get_settings().database_url))
    console.print("database is at the newest schema")
