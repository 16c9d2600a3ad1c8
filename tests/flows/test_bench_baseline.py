"""The naive baseline does the batch journey's work, in far more pieces: same seed, same end."""

from __future__ import annotations

import json

import pytest

from infra.tooling.bench.baseline import (
    ParsingRenderer,
    end_state_differences,
    naive_switches,
    put_each_member,
    run_baseline,
)
from infra.tooling.bench.story import run_bench
from tasks import documents
from tasks.archive import ArtifactStore, FileStore
from tasks.messaging import outbox, render
from tests.conftest import FIXTURES

ORDERS, SEED = 8, 11
GOLDEN = FIXTURES / "golden"


@pytest.fixture(scope="module")
def both_designs(tmp_path_factory):
    """The batch journey and the naive one over the same seeded story."""
    root = tmp_path_factory.mktemp("bench")
    batch = run_bench(ORDERS, SEED, root / "batch")
    naive = run_baseline(ORDERS, SEED, root / "naive")
    return batch, naive


def test_both_designs_leave_the_same_store(both_designs):
    batch, naive = both_designs
    assert end_state_differences(batch["store"], naive["store"]) == {}
    assert naive["store"]["orders_by_state"].get("delivered")
    assert naive["store"]["messages_by_status"].get("sent")


def test_the_baseline_runs_a_task_per_record_order_stage_and_message(both_designs):
    batch, naive = both_designs
    units = naive["units"]
    assert units["order_stages"] >= ORDERS * 5 and units["messages"] >= ORDERS
    started = naive["task_runs_started"]
    assert started["record"] >= units["records"] and started["order_stage"] >= units["order_stages"]
    assert started["message"] > units["messages"]  # one more: the dispatch that finds nothing
    assert naive["task_runs"] > 5 * batch["task_runs"] > 0  # as Prefect recorded them
    assert sum(started.values()) > 5 * batch["task_runs"]
    assert naive["archive_puts"] > batch["archive_puts"]
    per_order = naive["wall_seconds"] / ORDERS
    assert naive["extrapolated_seconds"] == pytest.approx(per_order * 100_000, rel=0.01)


def test_naive_switches_apply_inside_and_are_undone_after(cfg):
    saved = (render.renderer_for, outbox.renderer_for, documents.template_environment,
             ArtifactStore.put_bundle)
    with naive_switches():
        assert isinstance(outbox.renderer_for(cfg), ParsingRenderer)
        assert outbox.renderer_for(cfg) is not outbox.renderer_for(cfg)
        assert ArtifactStore.put_bundle is put_each_member
    assert saved == (render.renderer_for, outbox.renderer_for, documents.template_environment,
                     ArtifactStore.put_bundle)


def test_parsing_renderer_renders_what_the_cached_one_does(cfg):
    context = json.loads((GOLDEN / "confirmation_context.json").read_text(encoding="utf-8"))
    cached = render.renderer_for(cfg).render("confirmation", context)
    with naive_switches():
        parsed = outbox.renderer_for(cfg).render("confirmation", context)
    assert parsed == cached


def test_each_member_is_its_own_put(tmp_path):
    store = FileStore(tmp_path)
    with naive_switches():
        refs = store.put_bundle("documents/pack-1.zip", {"1-a/invoice.html": b"<p>1</p>",
                                                         "1-a/packing_slip.html": b"<p>2</p>"})
    assert store.puts == 2
    assert store.get(refs["1-a/invoice.html"]) == b"<p>1</p>"
    assert "#" not in refs["1-a/packing_slip.html"]
