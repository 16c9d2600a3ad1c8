"""What operators read in the Prefect UI: one set of artifacts per run, under stable keys.

Each key keeps its history in Prefect (one version per run), so "journey-funnel" over time is
the funnel over time. Every artifact says where the run's books are archived.
"""

from __future__ import annotations

import re
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from sqlalchemy import func, select

from flows.common import app_engine
from tasks.reporting import report
from tasks.returns.report import returns_markdown
from tasks.store.db import session_scope
from tasks.store.models import Message
from tasks.store.queries import find_order, order_view


def messages_by_status_and_reason(session) -> list[dict[str, Any]]:
    reason = func.coalesce(Message.reason, "")
    rows = session.execute(select(Message.status, reason, func.count())
                           .group_by(Message.status, reason).order_by(Message.status, reason))
    return [{"status": status, "reason": mask_emails(why)[:200], "messages": count}
            for status, why, count in rows]


def store_picture() -> dict[str, Any]:
    """The whole store now: funnel, messages, holds, quarantine, points (one read)."""
    with session_scope(app_engine()) as session:
        picture = report(session)
        picture["messages"] = messages_by_status_and_reason(session)
    return picture


def counts_table(counts: dict[str, Any], label: str) -> list[dict[str, Any]]:
    return [{label: key, "count": value} for key, value in counts.items()] or [{label: "none",
                                                                                 "count": 0}]


def publish_store_picture(title: str, manifest: dict[str, int], manifest_ref: str) -> None:
    """Funnel, messages, holds, quarantine and liability tables plus one markdown summary."""
    picture = store_picture()
    create_table_artifact(counts_table(picture["orders_by_state"], "state"), key="journey-funnel",
                          description="Orders by state after this run")
    create_table_artifact(picture["messages"] or [{"status": "none", "messages": 0}],
                          key="journey-messages", description="Messages by status and reason")
    create_table_artifact(counts_table(picture["holds_by_reason"], "reason"), key="journey-holds",
                          description="Orders on hold, by reason")
    create_table_artifact(counts_table(picture["quarantine_by_reason"], "reason"),
                          key="journey-quarantine", description="Open quarantine, by reason")
    create_markdown_artifact(store_markdown(title, picture, manifest, manifest_ref),
                             key="journey-store", description=title)
    create_markdown_artifact(returns_markdown(picture["returns"]), key="journey-returns",
                             description="Returns: by status, rate by reason and product, "
                             "refunds, exchanges, credit notes")
    create_link_artifact(manifest_ref, link_text="this run's manifest in the archive",
                         key="journey-archive", description="Where this run's books are kept")


def store_markdown(title: str, picture: dict[str, Any], manifest: dict[str, int],
                   manifest_ref: str) -> str:
    liability = picture["points_liability"]
    lines = [f"# {title}", "", "## This run's books", "",
             "| received | processed | quarantined | deferred | duplicates | unexplained |",
             "|---|---|---|---|---|---|",
             "| {received} | {processed} | {quarantined} | {deferred} | {duplicates} | "
             "{unexplained} |".format(**{k: manifest.get(k, 0) for k in (
                 "received", "processed", "quarantined", "deferred", "duplicates",
                 "unexplained")}),
             "", f"Archived at `{manifest_ref}`.", ""]
    lines += table_md("Orders by state", picture["orders_by_state"])
    lines += table_md("Holds by reason", picture["holds_by_reason"])
    lines += table_md("Quarantine by reason", picture["quarantine_by_reason"])
    lines += table_md("Messages by status", picture["messages_by_status"])
    lines += [f"**Points liability:** {liability.get('pending', 0)} pending, "
              f"{liability.get('approved', 0)} approved.", ""]
    return "\n".join(lines)


def table_md(title: str, counts: dict[str, Any]) -> list[str]:
    rows = [f"| {md_cell(key)} | {value} |" for key, value in counts.items()] or ["| none | 0 |"]
    return [f"### {title}", "", "| | count |", "|---|---|", *rows, ""]


EMAIL = re.compile(r"[^\s@'\"<>(),;:]+@([^\s@'\"<>(),;:]+)")


def mask_emails(text: str) -> str:
    """Operators see that an address was involved, not whose: a.b@shop.com → ***@shop.com."""
    return EMAIL.sub(r"***@\1", text)


def md_cell(value: Any) -> str:
    """Customer-influenced text cannot break the table, inject markup or show an address."""
    return re.sub(r"[|\r\n<>`*_\[\]]", " ", mask_emails(str(value)))[:120]


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "order"


def publish_order_timeline(order_id: str) -> dict[str, Any]:
    """One order's journey (states, steps, messages, parcels, points) as a markdown artifact."""
    with session_scope(app_engine()) as session:
        view = order_view(session, find_order(session, order_id))
    create_markdown_artifact(order_markdown(view), key=f"order-{artifact_key(view['external_id'])}",
                             description=f"Order {view['name'] or view['external_id']}")
    return view


def order_markdown(view: dict[str, Any]) -> str:
    lines = [f"# Order {md_cell(view['name'] or view['external_id'])}", "",
             f"**State:** {view['state']}" + (f" — {md_cell(view['hold_reason'])}"
                                              if view["hold_reason"] else ""),
             f"**Promised delivery:** {view['promised_delivery'] or '—'}", "",
             "## Timeline", "", "| at | what | from | to | by |", "|---|---|---|---|---|"]
    lines += [f"| {e['at'][:19]} | {e['kind']} | {e['from'] or ''} | {e['to'] or ''} | "
              f"{md_cell(e['actor'])} |" for e in view["events"]]
    lines += ["", "## Messages", "", "| template | status | sent at |", "|---|---|---|"]
    lines += [f"| {m['template']} | {m['status']} | {m['sent_at'] or ''} |"
              for m in view["messages"]]
    lines += ["", "## Returns", "", "| RMA | status | resolution | reason | items |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['rma']} | {r['status']} | {r['resolution']} | {md_cell(r['reason'])} | "
              + md_cell(", ".join(f"{ln['quantity']} × {ln['title']}" for ln in r["lines"]))
              + " |" for r in view.get("returns", [])] or ["| none | | | | |"]
    lines += ["", "## Archived documents", ""]
    lines += [f"- {a['kind']}: `{a['ref']}`" for a in view["artifacts"]] or ["- none yet"]
    return "\n".join(lines)
