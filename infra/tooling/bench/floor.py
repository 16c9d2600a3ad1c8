"""The floor: the least work that produces what a bench journey produced, on the same data.

After a journey, `measure_floor` redoes its output the cheapest way we know, in the same
process: the rows it left in the database with plain sqlite3 `executemany`, its messages and
documents with cached Jinja2 templates, one GX validation of the whole orders frame, and the
archive's objects as plain file writes. Efficiency = floor seconds / journey seconds.

Each component prepares its input first (reads the store, builds contexts and frames, warms
template and GX caches) and times only the work itself with `time.perf_counter`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.schema import CreateIndex, CreateTable

from infra.tooling.bench.story import START, BenchError, Workspace, using
from tasks.config import Config
from tasks.runtime import Runtime
from tasks.store.db import make_engine, session_scope
from tasks.store.models import Base, Message, Order

ROWS_PER_COMMIT = 1000  # the journey's default batch: one transaction per 1000 rows of a table
SIDECAR = ".sha256"
RENDERED = ("sent", "unknown")  # what the dispatcher rendered and handed to the transport
FLOOR_DB = "floor.db"


@contextmanager
def stopwatch(result: dict[str, Any]) -> Iterator[None]:
    """Adds the block's wall time to `result["seconds"]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        result["seconds"] = result.get("seconds", 0.0) + time.perf_counter() - started


def measure_floor(workspace: Workspace, scratch: Path) -> dict[str, Any]:
    """The floor for a finished journey in `workspace`; writes only under `scratch`.

    `scratch` is absent, empty or an earlier floor's (its floor.db and artifacts/ are replaced,
    and left there for inspection). Returns {"seconds": total, "components": {"sqlite_rows",
    "renders", "gx", "bundles"}}, each component with its counts and "seconds" (4 places).
    """
    scratch = clear_scratch(Path(scratch))
    with using(workspace):
        components = {
            "sqlite_rows": sqlite_rows_floor(workspace.database_url, scratch / FLOOR_DB),
            "renders": renders_floor(workspace.database_url),
            "gx": gx_floor(workspace.root / "input" / "orders.jsonl"),
            "bundles": bundles_floor(workspace.artifacts, scratch / "artifacts"),
        }
    for component in components.values():
        component["seconds"] = round(component["seconds"], 4)
    total = sum(component["seconds"] for component in components.values())
    return {"seconds": round(total, 4), "components": components}


def clear_scratch(scratch: Path) -> Path:
    """Remove an earlier floor's output; refuse a folder holding anything else."""
    ours = {FLOOR_DB, f"{FLOOR_DB}-wal", f"{FLOOR_DB}-shm", "artifacts"}
    found = {path.name for path in scratch.iterdir()} if scratch.exists() else set()
    if found - ours:
        raise BenchError(f"{scratch} holds more than a floor's output "
                         f"({', '.join(sorted(found - ours)[:3])}): give an empty folder")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


# ---------------------------------------------------------------- rows


def sqlite_rows_floor(database_url: str, target: Path) -> dict[str, Any]:
    """Every row the journey left, inserted into the same schema with sqlite3 executemany.

    One transaction per table and 1000 rows (the journey commits once per batch of 1000).
    The copy has the product's indexes, unique and foreign keys and its pragmas (WAL,
    synchronous=NORMAL, foreign_keys=ON); values are bound as SQLAlchemy binds them on SQLite.
    """
    tables = stored_rows(database_url)
    connection = floor_database(target, [table for table, _ in tables])
    result = {"rows": sum(len(rows) for _, rows in tables), "tables": len(tables)}
    try:
        with stopwatch(result):
            for table, rows in tables:
                insert_rows(connection, table, rows)
    finally:
        connection.close()
    return result


def stored_rows(database_url: str) -> list[tuple[Table, list[tuple[Any, ...]]]]:
    """(table, rows as sqlite3 parameters) for every model table, parents before children."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return [(table, sqlite_params(table, connection.execute(select(table)).all()))
                    for table in Base.metadata.sorted_tables]
    finally:
        engine.dispose()


def sqlite_params(table: Table, rows: list[Any]) -> list[tuple[Any, ...]]:
    """Rows as SQLAlchemy would bind them on SQLite: ISO text times, text money, JSON text."""
    dialect = sqlite.dialect()
    processors: list[Callable[[Any], Any] | None] = [
        column.type.dialect_impl(dialect).bind_processor(dialect) for column in table.columns
    ]
    return [tuple(value if process is None else process(value)
                  for process, value in zip(processors, row, strict=True)) for row in rows]


def floor_database(path: Path, tables: list[Table]) -> sqlite3.Connection:
    """A fresh SQLite file with the product's pragmas and the tables' DDL (indexes included)."""
    connection = sqlite3.connect(path, isolation_level=None)  # we issue BEGIN ourselves
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        connection.execute(f"PRAGMA {pragma}")
    dialect = sqlite.dialect()
    for table in tables:
        connection.execute(str(CreateTable(table).compile(dialect=dialect)))
        for index in table.indexes:
            connection.execute(str(CreateIndex(index).compile(dialect=dialect)))
    return connection


def insert_rows(connection: sqlite3.Connection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    names = ", ".join(f'"{column.name}"' for column in table.columns)
    marks = ", ".join("?" for _ in table.columns)
    statement = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})'
    for start in range(0, len(rows), ROWS_PER_COMMIT):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(statement, rows[start:start + ROWS_PER_COMMIT])
        connection.execute("COMMIT")


# ---------------------------------------------------------------- renders


def renders_floor(database_url: str) -> dict[str, Any]:
    """Every message the journey rendered (subject, HTML, text) and every packed order's
    documents, with the product's cached environments; contexts are built before the clock."""
    from flows.common import runtime

    rt = runtime()
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            mails = message_renders(session, rt)
            documents = document_renders(session, rt.config)
    finally:
        engine.dispose()
    result = {"messages": len(mails), "documents": len(documents)}
    with stopwatch(result):
        for render in (*mails, *documents):
            render()
    return result


def message_renders(session: Session, rt: Runtime) -> list[Callable[[], Any]]:
    """One ready-to-call render per message the journey rendered, with the context the
    dispatcher gave it (skipped, expired and still-pending mail was never rendered)."""
    from tasks.messaging.outbox import MARKETING
    from tasks.messaging.render import renderer_for
    from tasks.messaging.unsubscribe import unsubscribe_url

    renderer = renderer_for(rt.config)
    renders, first_of_template = [], {}
    rendered = select(Message).where(Message.status.in_(RENDERED)).order_by(Message.id)
    for message in session.scalars(rendered):
        context = dict(message.context)
        if message.msg_class == MARKETING:
            context["unsubscribe_url"] = unsubscribe_url(message.to_addr, rt)
        renders.append(partial(renderer.render, message.template, context))
        first_of_template.setdefault(message.template, renders[-1])
    for render in first_of_template.values():  # parse (and CSS-inline) each template once
        render()
    return renders


def document_renders(session: Session, config: Config) -> list[Callable[[], Any]]:
    """One ready-to-call render per document of every order that was packed."""
    from tasks.documents import DOCUMENT_KINDS, document_context, documents_dir, render_document

    orders = session.scalars(select(Order).where(Order.packing.is_not(None)).order_by(Order.id)
                             .options(selectinload(Order.lines), selectinload(Order.customer)))
    folder = documents_dir(config)
    renders = [partial(render_document, folder, kind,
                       document_context(order, order.packing, config.store))
               for order in orders for kind in DOCUMENT_KINDS]
    for render in renders[:len(DOCUMENT_KINDS)]:  # parse each document template once
        render()
    return renders


# ---------------------------------------------------------------- gx


def gx_floor(orders_file: Path) -> dict[str, Any]:
    """One GX validation of the orders frame for every order of the input file.

    The frame is built with the intake's `now` (the story's day 0); the GX context, asset and
    suite are built by a one-row warm-up first, as the journey's earlier batches built them.
    """
    from tasks.intake import OrderIn, read_orders
    from tasks.quality.gate import order_frame, validate_frame

    orders = [order for order in read_orders(orders_file) if isinstance(order, OrderIn)]
    frame = order_frame(orders, START)
    validate_frame("orders", frame.head(1))
    result: dict[str, Any] = {"rows": len(frame)}
    with stopwatch(result):
        validate_frame("orders", frame)
    return result


# ---------------------------------------------------------------- bundles


def bundles_floor(archive: Path, target: Path) -> dict[str, Any]:
    """Every archive object and its SHA-256 sidecar written again, fsynced like FileStore.

    FileStore writes a temp file, fsyncs it and hard-links it into place; the floor keeps the
    fsync (the same durability) and drops the temp file and link.
    """
    files = {target / path.relative_to(archive): path.read_bytes()
             for path in sorted(archive.rglob("*")) if path.is_file()}
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
    objects = [path for path in files if not path.name.endswith(SIDECAR)]
    result = {"objects": len(objects), "files": len(files),
              "bytes": sum(len(files[path]) for path in objects)}
    with stopwatch(result):
        for path, data in files.items():
            write_synced(path, data)
    return result


def write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
