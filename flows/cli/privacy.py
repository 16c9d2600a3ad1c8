"""`journeys unsubscribe` and `journeys erase`: a customer's own data and wishes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from flows.cli.common import (
    ActorOpt,
    JsonFlag,
    UserError,
    app,
    app_engine,
    console,
    notify,
    operator,
    print_json,
    runtime,
    session_scope,
    user_errors,
)


@app.command("unsubscribe")
@user_errors
def unsubscribe_cmd(token: str) -> None:
    """Suppress the address an unsubscribe link stands for (what its one-click POST does).

    TOKEN is the token or the whole link: a /u/ link or an older /unsubscribe?token= one.
    """
    from tasks import operations
    from tasks.messaging.unsubscribe import UnsubscribeError

    with session_scope(app_engine()) as session:
        try:
            applied = operations.unsubscribe(session, token, datetime.now(UTC),
                                             runtime().settings.secret_key, source="cli")
        except UnsubscribeError as exc:
            raise UserError(str(exc)) from None
    notify(applied.changes)
    console.print(f"unsubscribed {applied.outcome['address']}")


@app.command("erase")
@user_errors
def erase_cmd(
    email: Annotated[str, typer.Option("--email", help="The address to forget.")],
    by: ActorOpt = "",
    as_json: JsonFlag = False,
) -> None:
    """Erase a customer: anonymise them and their archived papers; keep a hashed suppression."""
    from tasks import operations
    from tasks.privacy import ErasureError
    from tasks.store.db import session_factory

    with session_factory(app_engine())() as session:
        try:
            applied = operations.erase_customer(session, email, datetime.now(UTC), runtime(),
                                                actor=operator(by))
        except ErasureError as exc:
            raise UserError(str(exc)) from None
    notify(applied.changes)
    show_erasure(applied.outcome, as_json)


def show_erasure(outcome: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(outcome)
    elif outcome["already_erased"]:
        console.print("already erased: nothing left to do")
    else:
        console.print(f"erased: {outcome['orders']} orders, {outcome['messages']} messages, "
                      f"{outcome['archive_rewritten']} archive bundles rewritten"
                      + (f"; {outcome['undelivered']} orders were still under way"
                         if outcome["undelivered"] else ""))
