"""One operations API: the CLI and the review flow decide a hold the same way, same events."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from typer.testing import CliRunner

from flows import common, decisions, order_events
from flows.cli import app
from tasks.settings import get_settings
from tasks.store.db import make_engine, session_scope
from tasks.store.migrate import ensure_schema
from tests.conftest import ROOT
from tests.factories import add_order

SAME = ("kind", "from_state", "to_state", "actor", "detail")  # all but the order and instant


@pytest.fixture
def held(tmp_path, monkeypatch, now):
    """Two orders on hold in a SQLite store both the CLI and the flows' engine point at."""
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    for name, value in (("DATABASE_URL", url), ("SECRET_KEY", "test-secret"),
                        ("CONFIG_DIR", str(ROOT / "configs")), ("MAIL_TRANSPORT", "file"),
                        ("ARTIFACTS_URL", f"file://{tmp_path / 'artifacts'}")):
        monkeypatch.setenv(f"JOURNEYS_{name}", value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    caches = (get_settings, common.runtime, common.app_engine)
    for cached in caches:
        cached.cache_clear()
    engine = make_engine(url)
    ensure_schema(engine)
    with session_scope(engine) as session:
        orders = [add_order(session, now, state="on_hold", step=None,
                            hold_reason="address_unverified: no street number")
                  for _ in range(2)]
        ids = [(o.id, o.external_id, o.name, o.source) for o in orders]
    yield ids
    engine.dispose()
    for cached in caches:
        cached.cache_clear()


def test_a_cli_hold_cancel_yields_the_state_changes_and_events_of_the_review_flow(
        held, monkeypatch, now):
    emitted: dict[str, list] = {}
    monkeypatch.setattr(order_events, "emit_state_changes",
                        lambda changes, **_: emitted.setdefault("cli", list(changes)))
    monkeypatch.setattr(decisions, "emit_state_changes",
                        lambda changes, **_: emitted.setdefault("flow", list(changes)))
    (cli_id, cli_ext, *_), (flow_id, *_) = held

    done = CliRunner().invoke(app, ["hold", "cancel", cli_ext, "--note", "fraud", "--by", "ana"])
    answer = SimpleNamespace(operator="ana", note="fraud", order_1="cancel")
    counts = decisions.apply_hold_decisions([decisions.Item(flow_id, "", "", "order_1")],
                                            answer, now)

    assert done.exit_code == 0, done.output
    assert counts["cancel"] == 1
    cli, flow = emitted["cli"], emitted["flow"]
    assert [c["order_id"] for c in cli] == [cli_id] and [c["order_id"] for c in flow] == [flow_id]
    assert [{k: c[k] for k in SAME} for c in cli] == [{k: c[k] for k in SAME} for c in flow]
    events = [order_events.order_event(c, "x", "x", "shopify")["event"] for c in cli + flow]
    assert events == ["journeys.order.cancelled"] * 2


def test_a_prefect_api_that_is_not_there_never_fails_a_done_decision(held, monkeypatch):
    def unreachable(changes, **_):
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(order_events, "emit_state_changes", unreachable)
    (_, external_id, *_), _ = held
    done = CliRunner().invoke(app, ["hold", "release", external_id, "--by", "ana"])
    assert done.exit_code == 0, done.output
    assert f"order {external_id}: released" in done.output
    assert "order events not sent" in done.stderr


def test_without_a_server_the_cli_emits_nothing_and_starts_none(monkeypatch, now):
    """No PREFECT_API_URL, in the environment or in the settings a stack test in the same
    worker process may still hold (tests/stack points them at its server for the session)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(order_events, "emit_event", lambda **_: pytest.fail("emitted"))
    change = {"order_id": 1, "to_state": "cancelled", "from_state": "on_hold", "at": now,
              "actor": "ana", "detail": {}}
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert order_events.emit_state_changes([change], outside_runs=True) == 0
