"""`journeys inbox`: webhook deliveries the edge stored."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.common import UserError, console, get_settings, session_scope, user_errors

inbox_app = typer.Typer(no_args_is_help=True, help="Webhook deliveries the edge stored.")


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
