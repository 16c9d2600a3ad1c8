"""`journeys run`, `order` and `report`: advance the journey and read where it stands."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.cli.common import (
    AsOfOpt,
    JsonFlag,
    UserError,
    app,
    app_engine,
    console,
    get_settings,
    parse_instant,
    print_json,
    session_scope,
    user_errors,
)
from flows.cli.prefect_api import prefect_api
from flows.display import show_report, show_stage_table


@app.command("run")
@user_errors
def run_cmd(
    as_of: AsOfOpt = None,
    daily: Annotated[bool, typer.Option("--daily", help="Also the daily work: late-parcel "
                                        "watch, birthday offers, loyalty tiers.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Advance all due work as of an instant (default now), through the Prefect sweep flow."""
    app_engine()
    now = parse_instant(as_of)
    with prefect_api("flows.journey"):
        from flows import journey
        from flows.parameters import DailyRequest, SweepRequest

        result = (journey.daily(DailyRequest(as_of=now)) if daily
                  else journey.sweep(SweepRequest(as_of=now)))
    if as_json:
        print_json(result)
    else:
        show_stage_table(console, result)


@app.command("order")
@user_errors
def order_cmd(
    external_id: str,
    target: Annotated[str | None, typer.Argument(
        help="With `cancel` first: the order to cancel.", show_default=False)] = None,
    by: Annotated[str, typer.Option("--by", help="Who cancels (default: $USER).")] = "",
    reason: Annotated[str, typer.Option("--reason", help="Why it is cancelled.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Show one order's journey: state, hold reason, packing, messages, timeline, artifacts.

    `journeys order cancel ORDER --by NAME --reason TEXT` cancels an order not shipped yet
    (a shipped one becomes a return to sender); void or refund its payment in Shopify.
    """
    from tasks.store.queries import find_order, order_view

    if target is not None:
        from flows.cli.operations import cancel_order

        if external_id != "cancel":
            raise UserError(f"unknown order action {external_id!r}: expected cancel")
        cancel_order(target, by, reason, as_json)
        return
    with session_scope(app_engine()) as session:
        view = without_addresses(order_view(session, find_order(session, external_id)))
    if as_json:
        print_json(view)
    else:
        show_order(view)


def without_addresses(view: dict[str, Any]) -> dict[str, Any]:
    """Hold reasons, timeline details and mail outcomes can quote the customer's address
    (`email_invalid: a..b@x.com`); show it masked, as the Prefect artifacts and forms do."""
    from flows.reporting import mask_emails

    def masked(value: Any) -> Any:
        if isinstance(value, str):
            return mask_emails(value)
        if isinstance(value, dict):
            return {key: masked(item) for key, item in value.items()}
        return [masked(item) for item in value] if isinstance(value, list) else value

    return view | {"hold_reason": masked(view["hold_reason"]),
                   "events": [e | {"detail": masked(e["detail"])} for e in view["events"]],
                   "messages": [m | {"reason": masked(m["reason"])} for m in view["messages"]]}


def show_order(view: dict[str, Any]) -> None:
    title = view["name"] or view["external_id"]
    source = f"{view['source']} {view['external_id']}"
    console.print(f"{title} ({source}): {view['state']}", style="bold")
    if view["hold_reason"]:
        console.print(f"held: {view['hold_reason']}")
    if view["promised_delivery"]:
        console.print(f"promised delivery: {view['promised_delivery']}")
    for item in view["packing"]["instructions"]:
        console.print(f"  pack: [{item.get('kind')}] {item.get('text')}")
    timeline = Table(title="timeline")
    for column in ("at", "event", "actor", "detail"):
        timeline.add_column(column)
    for e in view["events"]:
        change = f"{e['from'] or ''} → {e['to']}" if e["to"] else e["kind"]
        timeline.add_row(e["at"][:19], change, e["actor"], json.dumps(e["detail"])[:80])
    console.print(timeline)
    for m in view["messages"]:
        console.print(f"  mail {m['template']} v{m['version']} ({m['class']}): {m['status']}"
                      + (f" — {m['reason']}" if m["reason"] else ""))
    for a in view["artifacts"]:
        console.print(f"  artifact {a['kind']}: {a['ref']}")
    for s in view["shipments"]:
        console.print(f"  parcel {s['carrier']} {s['tracking_number']}: {s['status']}")
    for e in view["loyalty"]:
        console.print(f"  points {e['points']:+d} {e['kind']} ({e['status']}, rule "
                      f"{e['rule_version']})")
    for r in view.get("returns", []):
        lines = ", ".join(f"{ln['quantity']} × {ln['title']}"
                          + (f" → {ln['exchange_sku']}" if ln["exchange_sku"] else "")
                          for ln in r["lines"])
        console.print(f"  return {r['rma']} ({r['resolution']}, {r['reason']}): {r['status']}"
                      f" — {lines}")


@app.command("report")
@user_errors
def report_cmd(as_json: JsonFlag = False) -> None:
    """Orders by state, holds by reason, messages by status, quarantine by reason."""
    from tasks import inbox
    from tasks.reporting import report

    with session_scope(app_engine()) as session:
        data = report(session)
    settings = get_settings()
    with session_scope(inbox.inbox_engine(inbox.inbox_url(settings),
                                          settings.database_url)) as session:
        data |= inbox.inbox_summary(session)
    if as_json:
        print_json(data)
    else:
        show_report(console, data)
