"""Rich tables for what an operator reads in a terminal: a sweep's result and the store report.

Shared by the CLI (`journeys run`, `journeys report`) and the demo (infra/tooling/demo.py), so
the demo needs nothing from the CLI and the two never import each other. Each function prints to
the console it is given (the CLI's prints customer text as-is, never as markup).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

STAGE_COUNTS = ("advanced", "held", "closed", "skipped")


def show_stage_table(console: Console, result: dict[str, Any]) -> None:
    table = Table(title="journey sweep")
    for column in ("stage", *STAGE_COUNTS):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for name, s in result["stages"].items():
        table.add_row(name, *(str(s[k]) for k in STAGE_COUNTS))
    console.print(table)
    sent = ", ".join(f"{k} {v}" for k, v in result["messages"].items())
    console.print(f"messages: {sent or 'none'}")


def show_report(console: Console, data: dict[str, dict[str, Any]]) -> None:
    for title, counts in data.items():
        table = Table(title=title.replace("_", " "))
        table.add_column("key")
        table.add_column("count", justify="right")
        for key, count in counts.items():
            table.add_row(key, describe(count))
        console.print(table)


def describe(value: Any) -> str:
    if isinstance(value, dict) and "unexplained" in value:
        return describe_run(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in value.items())
    return str(value)


def describe_run(run: dict[str, Any]) -> str:
    """A manifest in one line: received = processed + quarantined + deferred + duplicates."""
    return (f"{run['at'][:19]}: {run['received']} = {run['processed']} + {run['quarantined']} "
            f"+ {run['deferred']} + {run['duplicates']} (unexplained {run['unexplained']})")
