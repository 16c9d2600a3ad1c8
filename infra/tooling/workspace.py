"""A folder of its own for a tool's store: database, archive, mail files and inputs.

The bench and the simulation run the real flows, which read the process-wide settings
(JOURNEYS_*, cached with the runtime and the engine). `using(workspace)` points them at the
workspace for a block and back afterwards, so a tool never writes into the operator's store.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flows.cli.prefect_api import environment as environment_set  # one way to set and restore


@dataclass(frozen=True)
class Workspace:
    """Where one bench or simulation run keeps its database, archive and input files."""

    root: Path
    database_url: str

    @classmethod
    def fresh(cls, root: Path, database_url: str | None) -> Workspace:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        return cls.at(root, database_url)

    @classmethod
    def at(cls, root: Path, database_url: str | None) -> Workspace:
        return cls(root.resolve(), database_url or f"sqlite:///{root.resolve() / 'journeys.db'}")

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def inputs(self) -> Path:
        return self.root / "input"

    def environment(self) -> dict[str, str]:
        """Mail as files whatever the operator configured (a tool never mails customers); the
        webhook inbox beside the workspace's database, not an operator's JOURNEYS_INBOX_URL."""
        return {"JOURNEYS_DATABASE_URL": self.database_url,
                "JOURNEYS_ARTIFACTS_URL": f"file://{self.artifacts}",
                "JOURNEYS_MAIL_TRANSPORT": "file", "JOURNEYS_INBOX_URL": ""}


@contextmanager
def using(workspace: Workspace) -> Iterator[None]:
    """Point the process-wide settings, runtime and engine at the workspace, then restore them."""
    with environment_set(workspace.environment()):
        clear_process_caches()
        try:
            yield
        finally:
            clear_process_caches()


def clear_process_caches() -> None:
    from flows import common
    from tasks.settings import get_settings

    for cached in (get_settings, common.runtime, common.app_engine):
        cached.cache_clear()


class WorkspaceRefused(RuntimeError):
    """The folder or database asked for holds something that is not the tool's to overwrite."""


def claim(root: Path, tool: str, database_url: str | None = None, reuse: bool = False,
          database_file: str = "journeys.db") -> Workspace:
    """A fresh workspace in `root` for one run of `tool`, never anyone else's data.

    The folder is emptied only if it is new, empty or made by an earlier run of the tool (it
    holds a marker file); its SQLite database is new each run. `database_url` names another
    database instead, which must not hold a store (orders or products) unless `reuse`.
    """
    if reuse and not database_url:
        raise WorkspaceRefused("--reuse needs --database: the default database is always new")
    marker = root / f".journeys-{tool}"
    if root.exists() and any(root.iterdir()) and not marker.exists():
        raise WorkspaceRefused(f"{root} is not empty and not a {tool} folder; give an empty or "
                               "new --workdir")
    if database_url and (held := stored_records(database_url)) and not reuse:
        raise WorkspaceRefused(
            f"{shown_url(database_url)} already holds a store ({held['orders']} orders, "
            f"{held['products']} products); the {tool} writes into it only with --reuse")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    marker.write_text(f"made by journeys {tool}; its next run empties this folder\n")
    return Workspace.at(root, database_url or f"sqlite:///{root.resolve() / database_file}")


def stored_records(database_url: str) -> dict[str, int]:
    """Orders and products in a database ({} when it has no journeys tables yet)."""
    from sqlalchemy import func, inspect, select

    from tasks.store.db import make_engine
    from tasks.store.models import Order, Product

    engine = make_engine(database_url)
    try:
        if not inspect(engine).has_table(Order.__tablename__):
            return {}
        with engine.connect() as conn:
            counts = {"orders": conn.scalar(select(func.count()).select_from(Order)),
                      "products": conn.scalar(select(func.count()).select_from(Product))}
    finally:
        engine.dispose()
    return counts if any(counts.values()) else {}


def shown_url(database_url: str) -> str:
    """A database URL to print: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)


def same_database(url: str, other: str) -> bool:
    """Whether two URLs name one database (a relative SQLite path counts from here)."""
    from sqlalchemy.engine import make_url

    def key(value: str) -> tuple:
        parsed = make_url(value)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            return ("sqlite", str(Path(parsed.database).resolve()))
        return (parsed.get_backend_name(), parsed.host, parsed.port, parsed.database)

    return key(url) == key(other)
