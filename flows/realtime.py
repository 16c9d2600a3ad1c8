"""Real time: a webhook becomes a sent confirmation within seconds, not at the next sweep.

The edge, after storing a delivery, asks for one `realtime-intake` run (a Prefect background
task: `delay()` creates it, a task worker that `journeys server` starts runs it). The run drains
the inbox, takes newly received orders through verification, packing and confirmation and
sends what is due — the same code as the sweep, only sooner. Requests are coalesced: at most one
per `NUDGE_INTERVAL` per edge process; the worker runs one at a time. If Prefect is away, the
next sweep does the same work: real time is a shortcut, never the only way.

    python -m flows.realtime      # the task worker (journeys server starts it)
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from flows.common import app_engine, batch_size
from flows.journey import drain_inbox, due_batches, run_stage_batch
from tasks.messaging.outbox import dispatch_committed

FIRST_STAGES = ("verify", "pack", "confirm")  # what a new order needs before its first mail
NUDGE_INTERVAL = 0.5  # seconds between two requests from one edge
log = logging.getLogger("journeys.realtime")


@task(name="realtime-intake", cache_policy=NONE)
def realtime_intake() -> dict[str, Any]:
    """Inbox → intake → verify, pack, confirm → mail, on the real clock (webhooks are now)."""
    from flows.common import runtime

    now, size = datetime.now(UTC), batch_size(None)
    report: dict[str, Any] = {"inbox": drain_inbox.fn(now, size)}
    for stage in FIRST_STAGES:
        advanced = 0
        for batch_no, ids in enumerate(due_batches(stage, now, size), start=1):
            advanced += run_stage_batch.fn(stage, batch_no, ids, now).advanced
        report[stage] = advanced
    report["mail"] = dispatch_committed(app_engine(), now, runtime(), size).as_dict()
    return report


class Nudger:
    """Coalesces "there is new work" signals into at most one `delay()` per interval.

    `nudge()` never blocks and never raises: the edge's answer must not wait for Prefect.
    """

    def __init__(self, submit=lambda: realtime_intake.delay(), interval: float = NUDGE_INTERVAL):
        self.submit, self.interval = submit, interval
        self.wanted = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="realtime-nudger", daemon=True)
        self.thread.start()

    def nudge(self) -> None:
        self.wanted.set()

    def _loop(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            try:
                self.submit()
            except Exception as exc:  # noqa: BLE001 - the sweep picks the work up instead
                log.warning("real-time intake not requested (%s); the next sweep takes it",
                            type(exc).__name__)
            threading.Event().wait(self.interval)


def warm_up() -> None:
    """Pay the one-off costs before the first webhook does: Great Expectations' import and
    context (about 10 s here), and the modules the drain loads on first use."""
    import tasks.lifecycle  # noqa: F401 - imported for its import time
    import tasks.tracking.ingest  # noqa: F401
    from tasks.quality.gate import gate_orders

    gate_orders([], datetime.now(UTC), 1.0)


def serve() -> None:
    """The task worker: one realtime-intake at a time, for as long as the process lives."""
    from prefect.task_worker import serve as serve_tasks

    warm_up()
    serve_tasks(realtime_intake, limit=1)


if __name__ == "__main__":
    serve()
