"""Named fault points, for the reliability tests: crash or hang the process at a chosen place.

`JOURNEYS_FAULT=<point>[@<n>]:<action>` makes the n-th time (default 1st) this process reaches
`<point>` do `<action>`: `kill` (SIGKILL itself: no cleanup, no rollback, no finally — what a
power cut or the OOM killer does) or `hang` (sleep until killed from outside, e.g. to kill a
worker mid-run). Unset — the only case in production — a fault point is two environment
lookups.
`JOURNEYS_FAULT_TRACE=<file>` appends each point reached to that file (the crash matrix uses it to
find which points each step of its story reaches).

The points (each named where it sits in the code):
  ingest:<kind>:before_commit / after_commit    a batch of input records
  stage:<stage>:before_commit / after_commit    one stage over one batch of orders
  dispatch:claimed                              claimed, governed, built; claim not committed
  dispatch:before_send[:marketing]              the claim committed, nothing sent yet
  dispatch:after_send[:marketing]               the transport answered, outcomes not recorded
                                                (`:marketing`: with marketing mail in the batch)
  dispatch:after_commit                         outcomes recorded
  archive:after_put                             an object is written, no row refers to it yet
  edge:before_commit / after_commit             webhook deliveries in the inbox, not yet
                                                answered (flows/edge.py: group commit)
"""

from __future__ import annotations

import os
import signal
import time

ENV = "JOURNEYS_FAULT"
TRACE_ENV = "JOURNEYS_FAULT_TRACE"
_hits: dict[str, int] = {}


def _armed() -> tuple[str, int, str] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    point, _, action = spec.rpartition(":")
    name, _, nth = point.partition("@")
    return name, int(nth or 1), action


def fault_point(name: str, variant: str = "") -> None:
    """Do the armed action if this is the armed point and its n-th hit; otherwise nothing.

    With a `variant` (e.g. "marketing": marketing mail is in flight) the point is reached both
    as `name` and as `name:variant`, so a crash can be aimed at that case alone.
    """
    fault_point_named(name)
    if variant:
        fault_point_named(f"{name}:{variant}")


def fault_point_named(name: str) -> None:
    if trace := os.environ.get(TRACE_ENV):
        with open(trace, "a") as out:
            out.write(name + "\n")
    armed = _armed()
    if armed is None or armed[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != armed[1]:
        return
    if armed[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif armed[2] == "hang":
        while True:
            time.sleep(3600)
    else:
        raise ValueError(f"{ENV}: unknown action {armed[2]!r} (use kill or hang)")
