"""The latency bench on its own small stack: it measures every run and the orders end confirmed.

No timing assertions: this checks that the measurement works, not how fast this machine is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from infra.tooling.bench.latency import measure_latency
from tasks.store.db import make_engine, session_scope
from tasks.store.models import Message, Order

pytestmark = [pytest.mark.slow]

RUNS = 3


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    return measure_latency(runs=RUNS, workdir=tmp_path_factory.mktemp("bench") / "latency")


def test_every_run_completes_with_its_order_confirmed(result):
    measured = [s for s in result["samples"] if s["latency_s"] is not None]

    assert result["runs"] == RUNS == len(measured)
    assert {(s["state"], s["order_state"]) for s in measured} == {("Completed", "confirmed")}


def test_each_run_has_a_cold_start_a_latency_and_summary_statistics(result):
    for name in ("latency_s", "cold_start_s", "run_s"):
        assert len(result["raw"][name]) == RUNS
        assert all(isinstance(value, float) for value in result["raw"][name])
        assert set(result[name]) == {"p50", "p95", "max", "n"} and result[name]["n"] == RUNS
    assert result["first_run"] == result["samples"][0]  # the first run on a fresh worker
    assert result["after_first"]["latency_s"]["n"] == RUNS - 1


def test_the_confirmations_were_really_written_by_the_file_transport(result):
    workspace = Path(result["workspace"])
    engine = make_engine(f"sqlite:///{workspace / 'journeys.db'}")
    try:
        with session_scope(engine) as session:
            refs = session.scalars(select(Message.artifact_ref).join(Order).where(
                Message.template == "confirmation", Message.status == "sent",
                Order.external_id.in_([s["order_id"] for s in result["samples"]]))).all()
    finally:
        engine.dispose()

    assert len(refs) == RUNS
    assert all(Path(ref.removeprefix("file://").split("#")[0]).is_file() for ref in refs)
