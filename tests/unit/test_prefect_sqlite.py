"""The stack's Prefect server on SQLite: a write transaction holds the write lock from BEGIN, so
a second writer waits for it instead of failing with "database is locked" mid-transaction."""

from __future__ import annotations

import asyncio
import sqlite3

import sqlalchemy as sa
from prefect.server.database.configurations import AioSqliteConfiguration

from infra.stack import immediate_sqlite_transactions


def other_writer_can_begin(path) -> bool:
    """Whether another connection could take the write lock while a Prefect transaction that
    has only read so far is open."""

    async def probe() -> bool:
        config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")
        engine = await config.engine()
        try:
            session = await config.session(engine)
            async with session, config.begin_transaction(session):
                await session.execute(sa.text("SELECT 1"))
                other = sqlite3.connect(path, timeout=0, isolation_level=None)
                try:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("ROLLBACK")
                    return True
                except sqlite3.OperationalError as exc:
                    assert "locked" in str(exc)
                    return False
                finally:
                    other.close()
        finally:
            await engine.dispose()

    return asyncio.run(probe())


def test_the_servers_sqlite_transactions_take_the_write_lock_at_begin(tmp_path, monkeypatch):
    # Prefect's own behaviour: a deferred BEGIN, so a read-then-write transaction can be
    # overtaken by another writer and then fail at once ("database is locked").
    assert other_writer_can_begin(tmp_path / "deferred.db")
    # restored after the test: the change is meant for the server's process only
    monkeypatch.setattr(AioSqliteConfiguration, "begin_transaction",
                        AioSqliteConfiguration.begin_transaction)
    immediate_sqlite_transactions()
    immediate_sqlite_transactions()  # twice is once

    assert not other_writer_can_begin(tmp_path / "immediate.db")
