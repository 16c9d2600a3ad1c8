"""The bench's floor on a small workspace the real stages filled (no Prefect server needed)."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from infra.tooling.bench.floor import measure_floor, sqlite_params
from infra.tooling.bench.story import BenchError, Workspace
from tasks.confirm import confirm
from tasks.intake import OrderIn, read_orders
from tasks.messaging.outbox import dispatch
from tasks.pack import pack
from tasks.runtime import Runtime
from tasks.settings import Settings
from tasks.store.db import make_engine, session_scope
from tasks.store.migrate import ensure_schema
from tasks.store.models import Base, Customer, Message, Money, Order
from tasks.verify import verify
from tests.conftest import FIXTURES, NOW, ROOT
from tests.factories import add_catalog, add_order

ORDERS = 3
LINES = [("TEE-1", 1, "25.00"), ("MUG-1", 2, "18.00")]


def runtime_for(workspace: Workspace, cfg) -> Runtime:
    settings = Settings(database_url=workspace.database_url, mail_transport="file",
                        artifacts_url=f"file://{workspace.artifacts}",
                        config_dir=ROOT / "configs", secret_key="test-secret")
    return Runtime(settings=settings, config=cfg)


def run_stages(workspace: Workspace, rt: Runtime) -> None:
    """Verify, pack (documents + bundle), confirm and dispatch (mail bundle) a few orders."""
    engine = make_engine(workspace.database_url)
    ensure_schema(engine)
    with session_scope(engine) as session:
        add_catalog(session, NOW)
        ids = [add_order(session, NOW, lines=LINES).id for _ in range(ORDERS)]
    for stage in (verify, pack, confirm):
        with session_scope(engine) as session:
            stage(session, ids, NOW, rt)
    with session_scope(engine) as session:
        dispatch(session, NOW, rt)
    engine.dispose()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cfg):
    """A workspace after a tiny journey, and the floor measured on it."""
    root = tmp_path_factory.mktemp("bench")
    workspace = Workspace.fresh(root / "ws", None)
    run_stages(workspace, runtime_for(workspace, cfg))
    add_input(workspace)
    return workspace, root / "scratch", measure_floor(workspace, root / "scratch")


def add_input(workspace: Workspace) -> None:
    (workspace.root / "input").mkdir()
    shutil.copy(FIXTURES / "orders_canonical.jsonl", workspace.root / "input" / "orders.jsonl")


def raw_rows(path, table: str) -> list[tuple]:
    """The stored values as sqlite3 sees them, money as Decimal ("0" and "0.00" are equal);
    columns in model order (the migrations may order them differently)."""
    columns = Base.metadata.tables[table].columns
    names = ", ".join(f'"{c.name}"' for c in columns)
    money = [isinstance(c.type, Money) for c in columns]
    with sqlite3.connect(path) as connection:
        rows = connection.execute(f'SELECT {names} FROM "{table}" ORDER BY rowid').fetchall()
    return [tuple(Decimal(v) if is_money and v is not None else v
                  for is_money, v in zip(money, row, strict=True)) for row in rows]


def test_the_floor_database_holds_the_journeys_rows_as_stored(finished):
    workspace, scratch, floor = finished
    source = workspace.root / "journeys.db"
    tables = [t.name for t in Base.metadata.sorted_tables]
    counts = {name: len(raw_rows(source, name)) for name in tables}
    assert counts["orders"] == ORDERS and counts["artifacts"] == 2 * ORDERS
    assert floor["components"]["sqlite_rows"]["rows"] == sum(counts.values())
    assert floor["components"]["sqlite_rows"]["tables"] == len(tables)
    for name in tables:
        assert raw_rows(scratch / "floor.db", name) == raw_rows(source, name), name


def test_the_floor_renders_every_message_and_document(finished):
    workspace, _, floor = finished
    engine = make_engine(workspace.database_url)
    with session_scope(engine) as session:
        messages = session.scalar(select(func.count()).select_from(Message)
                                  .where(Message.status == "sent"))
        packed = session.scalar(select(func.count()).where(Order.packing.is_not(None)))
    engine.dispose()
    assert messages == ORDERS and packed == ORDERS
    assert floor["components"]["renders"] | {"seconds": 0} == {
        "messages": messages, "documents": 2 * packed, "seconds": 0}


def test_the_floor_validates_every_order_of_the_input_file_once(finished):
    workspace, _, floor = finished
    orders = [o for o in read_orders(workspace.root / "input" / "orders.jsonl")
              if isinstance(o, OrderIn)]
    assert orders and floor["components"]["gx"]["rows"] == len(orders)


def test_the_floor_rewrites_every_archive_object_byte_for_byte(finished):
    workspace, scratch, floor = finished
    written = sorted(p.relative_to(workspace.artifacts) for p in workspace.artifacts.rglob("*")
                     if p.is_file())
    objects = [p for p in written if not p.name.endswith(".sha256")]
    bundles = floor["components"]["bundles"]
    assert len(objects) >= 2  # the documents' bundle and the mail bundle, at least
    assert (bundles["objects"], bundles["files"]) == (len(objects), len(written))
    assert bundles["bytes"] == sum((workspace.artifacts / p).stat().st_size for p in objects)
    for path in written:
        assert (scratch / "artifacts" / path).read_bytes() == (
            workspace.artifacts / path).read_bytes()


def test_every_component_is_timed_and_the_total_adds_up(finished):
    _, _, floor = finished
    seconds = [c["seconds"] for c in floor["components"].values()]
    assert all(s > 0 for s in seconds)
    assert floor["seconds"] == pytest.approx(sum(seconds), abs=1e-3)


def test_the_floor_reads_the_store_through_sqlalchemy_on_postgresql_too(engine, cfg, tmp_path):
    url = engine.url.render_as_string(hide_password=False)
    workspace = Workspace(tmp_path / "ws", url)
    workspace.root.mkdir()
    run_stages(workspace, runtime_for(workspace, cfg))
    add_input(workspace)
    with engine.connect() as connection:
        counts = {t.name: connection.scalar(select(func.count()).select_from(t))
                  for t in Base.metadata.sorted_tables}
    floor = measure_floor(workspace, tmp_path / "scratch")
    copied = {name: len(raw_rows(tmp_path / "scratch" / "floor.db", name)) for name in counts}
    assert counts["orders"] == ORDERS and copied == counts
    assert floor["components"]["sqlite_rows"]["rows"] == sum(counts.values())
    assert floor["components"]["renders"]["messages"] == counts["messages"] == ORDERS


def test_the_floor_replaces_its_own_output_and_refuses_any_other_folder(finished, tmp_path):
    workspace, scratch, floor = finished
    again = measure_floor(workspace, scratch)  # a rerun into the same folder
    copied = sum(len(raw_rows(scratch / "floor.db", name)) for name in Base.metadata.tables)
    rows = floor["components"]["sqlite_rows"]["rows"]
    assert again["components"]["sqlite_rows"]["rows"] == rows == copied
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(BenchError, match="more than a floor's output"):
        measure_floor(workspace, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def bound_row(table, **values) -> dict:
    """One row through sqlite_params, unset columns None, back as {column: bound value}."""
    names = [column.name for column in table.columns]
    row = tuple(values.get(name) for name in names)
    return dict(zip(names, sqlite_params(table, [row])[0], strict=True))


def test_values_are_bound_as_sqlalchemy_stores_them_on_sqlite():
    customer = bound_row(Customer.__table__, id=7, accepts_marketing=True, tags=["vip"],
                         birthday=date(1990, 5, 17),
                         created_at=datetime(2026, 3, 2, 19, tzinfo=timezone(timedelta(hours=2))))
    assert (customer["id"], customer["accepts_marketing"], customer["tags"]) == (7, 1, '["vip"]')
    assert (customer["birthday"], customer["created_at"]) == (
        "1990-05-17", "2026-03-02 17:00:00.000000")
    assert bound_row(Order.__table__, total=Decimal("12.50"))["total"] == "12.50"
