"""Operator jobs as flows: the quarantine (release by id, or a form to release, fix or
dismiss), erase a customer on request, cancel an order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.input import RunInput
from pydantic import Field

from flows.common import app_engine, business_now, runtime
from flows.decisions import (
    KEEP,
    Item,
    decision_form,
    operator_name,
    timeout_minutes,
    wait_for_decisions,
)
from flows.order_events import emit_state_changes
from flows.parameters import (
    CancelOrderRequest,
    ErasureRequest,
    QuarantineReleaseRequest,
    QuarantineReviewRequest,
)
from flows.reporting import mask_emails, md_cell
from tasks import operations
from tasks.intake.formats import IntakeError
from tasks.intake.masking import mask_record
from tasks.intake.release import QuarantineNotFound
from tasks.store.db import session_factory, session_scope
from tasks.store.models import Quarantine
from tasks.store.queries import find_order, open_quarantine_entries


@flow(name="quarantine-release", log_prints=True)
def release_quarantine(request: QuarantineReleaseRequest) -> dict[str, Any]:
    """Feed quarantined records back in once their source is corrected; twice is a no-op.

    Each entry is released in its own transaction, so one that still fails keeps its reasons
    and does not hold back the others.
    """
    now, rows = business_now(request.as_of), []
    for entry_id in request.entry_ids:
        with session_scope(app_engine()) as session:
            applied = operations.release_quarantine(session, entry_id, now, runtime())
        emit_state_changes(applied.changes)
        rows.append({"entry": entry_id, "outcome": applied.outcome["status"],
                     "reasons": reasons_text(applied.outcome["reasons"])})
    create_table_artifact(rows, key="quarantine-release", description="What each entry did")
    summary = summary_of(rows)
    get_run_logger().info("quarantine release: %s", summary)
    return {"entries": rows, "summary": summary}


def reasons_text(reasons: list[dict[str, Any]] | None) -> str:
    """Reasons on one line, addresses masked (a reason may quote the value it refused)."""
    return md_cell("; ".join(f"{r.get('field')}: {r.get('reason')}" for r in reasons or []))


def summary_of(rows: list[dict[str, Any]]) -> dict[str, int]:
    outcomes = [row["outcome"] for row in rows]
    return {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}


# --- the quarantine form -----------------------------------------------------------------------

QuarantineAction = Literal["keep", "release", "fix", "dismiss"]
RECORD_IN_FORM = 100_000  # characters: a longer record is shown cut, and fixed with the CLI


@dataclass(frozen=True)
class Entry:
    """One open quarantine entry as the form and its artifact show it (personal data masked)."""

    id: int
    kind: str
    origin: str
    reasons: str  # plain text: forms show it as typed, artifacts through md_cell
    record: str  # masked
    is_json: bool

    @property
    def editable(self) -> bool:
        return len(self.record) <= RECORD_IN_FORM

    @property
    def shown(self) -> str:
        return self.record if self.editable else self.record[:2000] + "\n…"


def entry_view(entry: Quarantine) -> Entry:
    record = mask_record(entry.payload, entry.source)
    is_json = entry.source != "csv" and record.lstrip()[:1] in ("{", "[")
    reasons = "; ".join(f"{r.get('field')}: {r.get('reason')}" for r in entry.reasons or [])
    return Entry(entry.id, entry.kind, mask_emails(entry.origin or ""),
                 " ".join(mask_emails(reasons).split()), record, is_json)


def entry_fields(entry: Entry) -> dict[str, Any]:
    """After the entry's choice: the record to fix (as shown), why to dismiss."""
    record_format = {"format": "json-string"} if entry.is_json and entry.editable else {}
    how = ("For fix: correct it here. Masked values (•) left as shown keep their real value; "
           "to change one, type it whole." if entry.editable else
           f"Too long to edit here: fix it with `journeys quarantine fix {entry.id}`.")
    prefix = f"entry_{entry.id}"
    return {
        f"{prefix}_record": (str, Field(entry.shown, title=f"Entry {entry.id}: the record",
                                        description=how, json_schema_extra=record_format)),
        f"{prefix}_reason": (str, Field("", max_length=300, title=f"Entry {entry.id}: why "
                                        "dismiss", description="For dismiss (required then).")),
    }


def quarantine_items(entries: list[Entry]) -> list[Item]:
    return [Item(e.id, f"Entry {e.id} · {e.kind} · {e.origin or 'origin unknown'}",
                 f"Refused: {e.reasons}. release: feed it in as it is (its cause was fixed "
                 "elsewhere, e.g. the product now exists); fix: feed in the record as edited "
                 "below; dismiss: drop it for good; keep: decide later.", f"entry_{e.id}")
            for e in entries]


def entries_markdown(entries: list[Entry], minutes: int) -> str:
    lines = ["# Quarantine entries to decide", "",
             f"Waiting up to {minutes} minutes; anything left on *keep* stays quarantined. "
             "Personal data is masked (•).", "", "| entry | kind | from | refused because |",
             "|---|---|---|---|"]
    lines += [f"| {e.id} | {e.kind} | {md_cell(e.origin)} | {md_cell(e.reasons)} |"
              for e in entries]
    for e in entries:
        lines += ["", f"## Entry {e.id}", "", code_block(e.shown)]
    return "\n".join(lines)


def code_block(text: str) -> str:
    """A fenced block that no backtick run inside `text` can close."""
    fence = "`" * max(3, max((len(run) + 1 for run in re.findall(r"`+", text)), default=0))
    return f"{fence}\n{text}\n{fence}"


def decide_entry(entry: Entry, answer: RunInput, now: datetime) -> dict[str, Any]:
    """The operator's choice for one entry, in its own transaction; refused choices reported."""
    action: str = getattr(answer, f"entry_{entry.id}")
    row = {"entry": entry.id, "kind": entry.kind, "action": action, "outcome": "kept",
           "reasons": "", "now_entry": ""}
    if action == KEEP:
        return row
    actor = operator_name(answer)
    try:
        with session_scope(app_engine()) as session:
            applied = apply_action(session, entry, action, answer, now, actor)
    except (operations.OperationRefused, IntakeError, QuarantineNotFound) as refused:
        return row | {"outcome": "refused", "reasons": md_cell(str(refused))}
    emit_state_changes(applied.changes)
    outcome = applied.outcome
    return row | {"outcome": outcome["status"], "reasons": reasons_text(outcome["reasons"]),
                  "now_entry": outcome.get("replaced_by") or ""}


def apply_action(session, entry: Entry, action: str, answer: RunInput, now: datetime,
                 actor: str) -> operations.Applied:
    if action == "fix" and not entry.editable:
        raise operations.OperationRefused(f"entry {entry.id} is too long to fix in the form: "
                                          f"use `journeys quarantine fix {entry.id}`")
    if action == "release":
        return operations.release_quarantine(session, entry.id, now, runtime())
    if action == "dismiss":
        return operations.dismiss_quarantine(session, entry.id,
                                             getattr(answer, f"entry_{entry.id}_reason"), now,
                                             actor)
    record = getattr(answer, f"entry_{entry.id}_record")
    return operations.fix_quarantine(session, entry.id, record, now, runtime(), actor,
                                     masked=True)


@flow(name="quarantine-review", log_prints=True)
def review_quarantine(
    request: QuarantineReviewRequest = QuarantineReviewRequest(),  # noqa: B008
) -> dict[str, Any]:
    """Show open quarantine entries in one form (personal data masked): release, fix (edit the
    record) or dismiss each; every entry's outcome goes into the "quarantine-review" table."""
    with session_scope(app_engine()) as session:
        entries = [entry_view(e) for e in open_quarantine_entries(session, request.entry_ids,
                                                                  request.limit)]
    minutes = timeout_minutes(request.timeout_minutes)
    if not entries:
        return {"entries": 0}
    create_markdown_artifact(entries_markdown(entries, minutes), key="quarantine",
                             description="Open quarantine entries in the form below")
    per_item = {f"entry_{e.id}": entry_fields(e) for e in entries}
    intro = ("Decide each quarantined record: **release** feeds it in as it is, **fix** feeds in "
             "the record as you corrected it (still refused, it stays quarantined with the new "
             "reasons), **dismiss** drops it (say why), **keep** leaves it.")
    form = decision_form("QuarantineReview", quarantine_items(entries), QuarantineAction, intro,
                         per_item=per_item)
    answer = wait_for_decisions(form, minutes)
    if answer is None:
        get_run_logger().warning("quarantine review expired after %s minutes", minutes)
        return {"entries": len(entries), "expired": True}
    now = datetime.now(UTC)  # a human decision happens on the real clock
    rows = [decide_entry(entry, answer, now) for entry in entries]
    create_table_artifact(rows, key="quarantine-review", description="What each entry did")
    return {"entries": len(entries), "results": rows, "summary": summary_of(rows)}


@flow(name="erase-customer", log_prints=True)
def erase_customer(request: ErasureRequest) -> dict[str, Any]:
    """Anonymise the customer who placed an order, everywhere; keep a hashed suppression."""
    with session_scope(app_engine()) as session:
        email = find_order(session, request.order_id).email
    # It commits itself: the archive may only change after the database has.
    with session_factory(app_engine())() as session:
        applied = operations.erase_customer(session, email, business_now(None), runtime(),
                                            actor=request.requested_by)
    emit_state_changes(applied.changes)
    counts = applied.outcome
    create_table_artifact([{"what": k, "count": v} for k, v in counts.items()],
                          key="customer-erasure", description="Erasure (no personal data here)")
    return counts


@flow(name="cancel-order", log_prints=True)
def cancel_order(request: CancelOrderRequest) -> dict[str, Any]:
    """Cancel an order not shipped yet, as `journeys order cancel` does: stock released, steps
    and unsent mail stopped, points reversed, the customer told, the packer told (Do not ship)
    if it was packed. The payment is NOT touched: void or refund it in Shopify."""
    with session_scope(app_engine()) as session:
        applied = operations.cancel_order(session, request.order_id, business_now(None),
                                          runtime(), request.cancelled_by, request.reason)
    emit_state_changes(applied.changes)
    outcome = applied.outcome
    create_table_artifact([{"what": k, "value": str(v)} for k, v in outcome.items()],
                          key="cancel-order", description=outcome["outcome"])
    get_run_logger().info("order %s: %s", outcome["order"], outcome["outcome"])
    return outcome
