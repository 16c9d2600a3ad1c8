"""Rich tables for what an operator reads in a terminal: a sweep's result and the store report.

Shared by the CLI (`journeys run`, `journeys report`) and the demo (infra/tooling/demo.py), so
the demo needs nothing from the CLI and the two never import each other. Each function prints to
the console it is given (the CLI's prints customer text as-is, never as markup).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

STAGE_COUNTS = ("advanced", "held", "closed", "skipped")


def show_stage_table(console: Console, result: dict[str, Any], active_only: bool = False) -> None:
    """A sweep's stages and counts; `active_only` leaves out stages that had nothing to do."""
    table = Table(title="journey sweep")
    for column in ("stage", *STAGE_COUNTS):
        table.add_column(column, justify="left" if column == "stage" else "right")
    idle = []
    for name, s in result["stages"].items():
        if active_only and not any(s[k] for k in STAGE_COUNTS):
            idle.append(name)
            continue
        table.add_row(name, *(str(s[k]) for k in STAGE_COUNTS))
    console.print(table)
    if idle:
        console.print(f"nothing due yet: {', '.join(idle)}", soft_wrap=True)
    sent = ", ".join(f"{k} {v}" for k, v in result["messages"].items())
    console.print(f"messages: {sent or 'none'}")


# What each report section's two columns hold (tasks/reporting.py, tasks/inbox.py). A section
# not named here and called `<counted>_by_<key>` gets (key, counted); any other (name, value).
REPORT_COLUMNS = {
    "orders_by_state": ("state", "orders"),
    "holds_by_reason": ("reason", "holds"),
    "messages_by_status": ("status", "messages"),
    "quarantine_by_reason": ("reason", "records"),
    "points_liability": ("points", "total"),
    "review_requests_by_rating": ("survey rating", "delivered orders, asked for a review"),
    "review_requests": ("outcome", "review requests"),
    "approved_reviews_by_rating": ("stars", "approved reviews"),
    "survey_page": ("survey page", "times"),
    "fit_survey": ("fit", "answers"),
    "winback": ("outcome", "win-back mails"),
    "latest_runs": ("run", "received = processed + quarantined + deferred + duplicates"),
    "privacy_requests": ("request", "status"),
    "not_shipped": ("confirmed, no parcel", "orders"),
    "returns": ("returns", "figure"),
    "inbox": ("provider and topic", "deliveries by status"),
    "inbox_reasons": ("status: reason", "deliveries"),
    "inbox_last_delivery": ("provider", "last delivery"),
}


def report_columns(section: str) -> tuple[str, str]:
    if section in REPORT_COLUMNS:
        return REPORT_COLUMNS[section]
    counted, by, key = section.partition("_by_")
    return (key.replace("_", " "), counted.replace("_", " ")) if by else (
        section.replace("_", " "), "value")


def show_report(console: Console, data: dict[str, dict[str, Any]],
                sections: tuple[str, ...] | None = None) -> None:
    """One table per section (`sections`: only those); an empty section is one line."""
    for name, counts in data.items():
        if sections is not None and name not in sections:
            continue
        title = name.replace("_", " ")
        if not counts:
            console.print(f"{title}: none")
            continue
        key, value = report_columns(name)
        table = Table(title=title, title_justify="left")
        table.add_column(key)
        table.add_column(value, justify="right")
        for item, count in counts.items():
            table.add_row(item, describe(count))
        console.print(table)


def describe(value: Any) -> str:
    if isinstance(value, dict) and "unexplained" in value:
        return describe_run(value)
    if isinstance(value, dict) and not value:
        return "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in value.items())
    return str(value)


def describe_run(run: dict[str, Any]) -> str:
    """A manifest in one line: received = processed + quarantined + deferred + duplicates."""
    return (f"{run['at'][:19]}: {run['received']} = {run['processed']} + {run['quarantined']} "
            f"+ {run['deferred']} + {run['duplicates']} (unexplained {run['unexplained']})")


def journeys_command() -> str:
    """How to type `journeys` in this shell: the bare name when it is on PATH, else the venv's
    script (`.venv/bin/journeys` from the project folder), so printed hints work as printed."""
    script = Path(sys.executable).parent / "journeys"
    if not script.exists():  # not installed as a script: the module works anywhere
        return f"{sys.executable} -m flows.cli"
    on_path = shutil.which("journeys")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "journeys"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)
