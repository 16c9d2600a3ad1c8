"""`journeys` command line: thin commands over the flows, the operations API and the store.

One module per command group. The top-level commands (`run`, `erase`, ...) add themselves to
the root `app` (flows/cli/common.py) when their module is imported; the groups (`hold`,
`ingest`, ...) are sub-apps added here. Both in the order `journeys --help` lists them.
"""

from __future__ import annotations

from importlib import import_module

from flows.cli.common import app

TOP_LEVEL = ("run", "archive", "privacy", "stack", "tools")  # modules adding to `app` itself
TOP_LEVEL += ("find",)  # `journeys find-order`
TOP_LEVEL += ("documents",)  # `journeys documents`, `journeys print-batch`
GROUPS = (("db", "db", "db_app"), ("ingest", "ingest", "ingest_app"),  # name, module, sub-app
          ("hold", "operations", "hold_app"), ("quarantine", "operations", "quarantine_app"),
          ("case", "operations", "case_app"), ("returns", "returns", "returns_app"),
          ("inbox", "inbox", "inbox_app"),
          ("reconcile", "reconcile", "reconcile_app"), ("archive", "archive", "archive_app"),
          ("reviews", "reviews", "reviews_app"), ("config", "config", "config_app"),
          ("i18n", "i18n", "i18n_app"))

for _module in TOP_LEVEL:
    import_module(f"flows.cli.{_module}")
for _name, _module, _group in GROUPS:
    app.add_typer(getattr(import_module(f"flows.cli.{_module}"), _group), name=_name)

__all__ = ["app", "main"]


def main() -> None:
    app()
