"""`journeys bench --baseline`: the same story done the naive way, to show what batching buys.

The naive design is what an obvious Prefect port would look like:
  - one task run per order per stage, each opening its own session and committing;
  - one task run per input record, each with its own commit and its own Great Expectations
    validation (the intake writers gate whatever batch they are given: here, one record);
  - one task run per outgoing message;
  - a template parse per message and per document (no parsed-template cache);
  - one archive PUT per document and per e-mail (no bundles).
The stage functions, intake writers and dispatcher are the real ones, called with batches of
one, on the same seeded data and the same story (story.py), so the end state must match the
batch journey's. The two "naive" switches (template cache, bundling) are swapped in here for
the run only and restored afterwards; no product code knows about them.

It runs at a small size (1k orders) and is extrapolated linearly to 100k orders. Linear is
kind to the baseline: per-order work only gets slower as the tables grow.
"""

from __future__ import annotations

import mimetypes
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from flows.common import app_engine, publish_manifest, runtime
from flows.intake import archive_validations, publish_validations, read, write
from flows.journey import (
    STAGES,
    add_counts,
    check_outputs,
    due_batches,
    notify_state_changes,
    summary,
    sweep_manifest,
)
from infra.tooling.bench.story import Workspace, input_files, measured
from tasks import intake
from tasks.journey import StageResult
from tasks.manifest import intake_manifest
from tasks.messaging.outbox import dispatch
from tasks.messaging.render import Rendered, Renderer
from tasks.store.db import session_scope
from tasks.store.journal import take_state_changes

# Task runs this process started, by kind: Prefect's own count lags far behind at thousands
# of task runs (its recorder takes them one at a time), so the baseline counts them itself.
TASK_CALLS: Counter[str] = Counter()
PAGE = 1000  # how many due order ids one query lists; each still gets its own task run
MAX_MESSAGES_PER_SWEEP = 1_000_000  # a bound, as dispatch_all has one, never reached
# The store's contents that must match the batch journey (latest_runs holds run ids).
END_STATE = ("orders_by_state", "holds_by_reason", "messages_by_status",
             "quarantine_by_reason", "points_liability", "review_requests_by_rating")


# ---------------------------------------------------------------- the naive switches


@contextmanager
def swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name` is `value` inside the block, and what it was before afterwards."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


class ParsingRenderer(Renderer):
    """Parses a message's subject, HTML (with CSS inlining) and text on every render."""

    def __init__(self, template_dir: Path, specs: Mapping[str, Any]) -> None:
        self.template_dir, self.specs = Path(template_dir), specs

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        if name not in self.specs:
            raise LookupError(f"no template spec named {name!r} in messaging.yaml")
        return Renderer(self.template_dir, {name: self.specs[name]}).render(name, context)


def parsing_renderer_for(config: Any) -> Renderer:
    """Stands in for render.renderer_for: no process-wide cache of parsed templates."""
    return ParsingRenderer(config.dir / "templates" / "email", config.messaging.templates)


def put_each_member(store: Any, key: str, members: dict[str, bytes]) -> dict[str, str]:
    """Stands in for ArtifactStore.put_bundle: one object (one PUT) per document or e-mail."""
    folder = key.removesuffix(".zip")
    return {name: store.put(f"{folder}/{name}", data,
                            mimetypes.guess_type(name)[0] or "application/octet-stream")
            for name, data in sorted(members.items())}


@contextmanager
def naive_switches() -> Iterator[None]:
    """No parsed-template caches and no bundles, for the baseline run only."""
    from tasks import documents
    from tasks.archive import ArtifactStore
    from tasks.messaging import outbox, render

    with ExitStack() as stack:
        # outbox imported renderer_for by name: both lookup sites must see the stand-in.
        stack.enter_context(swapped(render, "renderer_for", parsing_renderer_for))
        stack.enter_context(swapped(outbox, "renderer_for", parsing_renderer_for))
        stack.enter_context(swapped(documents, "template_environment",
                                    documents.template_environment.__wrapped__))
        stack.enter_context(swapped(ArtifactStore, "put_bundle", put_each_member))
        yield


# ---------------------------------------------------------------- tasks: one per unit


@task(task_run_name="ingest-{kind}-{record_no}", cache_policy=NONE)
def ingest_record(kind: str, record_no: int, record: Any, now: datetime) -> intake.IntakeResult:
    """One input record in its own transaction (and its own quality-gate validation)."""
    TASK_CALLS["record"] += 1
    with session_scope(app_engine()) as session:
        return write(kind, session, [record], now, runtime())


@task(task_run_name="{stage}-{order_id}", cache_policy=NONE, retries=2, retry_delay_seconds=2)
def run_stage_for_order(stage: str, order_id: int, now: datetime) -> StageResult:
    """One stage for one order, in its own transaction."""
    TASK_CALLS["order_stage"] += 1
    with session_scope(app_engine()) as session:
        result = STAGES[stage](session, [order_id], now, runtime())
        changes = take_state_changes(session)
    result.received = 1
    notify_state_changes(changes)
    return result


@task(task_run_name="dispatch-{message_no}", cache_policy=NONE)
def dispatch_one(message_no: int, now: datetime) -> dict[str, int]:
    """The most urgent due message, alone: claim, govern, render, send, record.

    Without the journeys-mail slot the real dispatcher takes: on Prefect 3.8.8 entering
    `concurrency()` costs about 2 s per call even when the limit does not exist, which per
    message would swamp everything else (and flatter the batch design).
    """
    TASK_CALLS["message"] += 1
    with session_scope(app_engine()) as session:
        return dispatch(session, now, runtime(), limit=1).as_dict()


# ---------------------------------------------------------------- flows: one per story step


@flow(name="baseline-ingest")
def naive_ingest(kind: str, source: str, now: datetime) -> dict[str, int]:
    """The ingest flow, record by record; its validations and manifest as the real one's."""
    total = intake.IntakeResult()
    run_id = str(flow_run.id or uuid.uuid4())
    for record_no, record in enumerate(read(kind, Path(source), None), start=1):
        total.add(ingest_record(kind, record_no, record, now))
    if total.validations:
        publish_validations(kind, total, archive_validations(run_id, kind, now, total))
    publish_manifest(intake_manifest(run_id, f"ingest-{kind}", now, total.as_dict()))
    return total.as_dict()


def stage_per_order(stage: str, now: datetime) -> StageResult:
    total = StageResult(stage)
    for ids in due_batches(stage, now, PAGE):
        for order_id in ids:
            total.add(run_stage_for_order(stage, order_id, now))
    return total


def dispatch_each(now: datetime) -> dict[str, int]:
    """Send message by message until one sends nothing new, as dispatch_all does by batch."""
    totals: dict[str, int] = {}
    for message_no in range(1, MAX_MESSAGES_PER_SWEEP):
        outcome = dispatch_one(message_no, now)
        add_counts(totals, outcome)
        if sum(outcome.values()) == 0:
            break
    return totals


@flow(name="baseline-sweep", log_prints=True)
def naive_sweep(now: datetime) -> dict[str, Any]:
    """The sweep, order by order and message by message; manifest and output checks as usual."""
    results = {stage: stage_per_order(stage, now) for stage in STAGES}
    report = summary(results, dispatch_each(now))
    manifest = sweep_manifest(results, now)
    report["manifest"] = manifest.counts()
    publish_manifest(manifest)
    if results["confirm"].advanced:
        report["output_checks"] = check_outputs(now)
    return report


# ---------------------------------------------------------------- the story and the measure


def naive_steps() -> tuple[Any, Any]:
    """The naive flows as the story's two steps (named runs, so task runs can be counted)."""
    def ingest_step(kind: str, path: Path, at: datetime, name: str) -> Any:
        return naive_ingest.with_options(flow_run_name=name)(kind, str(path), at)

    def sweep_step(at: datetime, name: str) -> Any:
        return naive_sweep.with_options(flow_run_name=name)(at)

    return ingest_step, sweep_step


def run_baseline(orders: int, seed: int, workdir: Path, extrapolate_to: int = 100_000
                 ) -> dict[str, Any]:
    """The naive journey for `orders` orders, measured, and its time scaled to `extrapolate_to`."""
    workspace = Workspace.fresh(workdir, None)
    files = input_files(workspace, orders, seed)
    TASK_CALLS.clear()
    with naive_switches():
        result = measured(workspace, files, orders, naive_steps())
    wall = result["wall_seconds"]
    return {
        "orders": orders, "seed": seed, "design": "naive: per order, per record, per message",
        "seconds_per_order": round(wall / orders, 4), "extrapolated_to": extrapolate_to,
        "extrapolated_seconds": round(wall / orders * extrapolate_to, 1),
        "task_runs_started": dict(TASK_CALLS), "units": units_of_work(result.pop("reports")),
        **result,
    }


def units_of_work(reports: dict[str, Any]) -> dict[str, int]:
    """What got a task run of its own: input records, (order, stage) pairs, messages."""
    sweeps = [r for step, r in reports.items() if step.startswith("sweep")]
    return {
        "records": sum(r["received"] for step, r in reports.items() if step.startswith("ingest")),
        "order_stages": sum(r["manifest"]["received"] for r in sweeps),
        "messages": sum(sum(r["messages"].values()) for r in sweeps),
    }


def end_state_differences(batch_store: dict[str, Any], naive_store: dict[str, Any]
                          ) -> dict[str, tuple[Any, Any]]:
    """What the two designs left differently (empty: they did the same work)."""
    return {key: (batch_store.get(key), naive_store.get(key)) for key in END_STATE
            if batch_store.get(key) != naive_store.get(key)}
