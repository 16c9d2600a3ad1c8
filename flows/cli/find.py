"""`journeys find-order QUERY`: the find-order flow's page, printed in the terminal."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from flows.cli.common import app, app_engine, console, get_settings, session_scope, user_errors


@app.command("find-order")
@user_errors
def find_order_cmd(
    query: Annotated[str, typer.Argument(help="An order number (#1001 or 1001), part of the "
                                         "customer's first or last name, or their e-mail.")],
    raw: Annotated[bool, typer.Option("--markdown", help="Print the Markdown as is.")] = False,
) -> None:
    """One order in full (items, customer, address, totals, timeline, messages, documents),
    or the list of orders that match; what the find-order flow shows in the Prefect UI."""
    from rich.markdown import Markdown

    from flows.reporting import order_search
    from tasks.runtime import Runtime

    with session_scope(app_engine()) as session:
        page = order_search(session, query, Runtime.from_settings(get_settings()))
    if raw:  # unwrapped: a table row is one line
        sys.stdout.write(page.markdown + "\n")
    else:
        console.print(Markdown(page.markdown, hyperlinks=False))
