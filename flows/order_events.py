"""Order state changes as Prefect events, so the event feed and automations see each order.

The timeline rows in our database stay the record; an event notifies one of them, sent after
the batch committed (a crash in between loses the notification, never the change). Its id is
derived from the order, state and instant, so a repeat is recognisably the same event.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL
from sqlalchemy import select

from flows.common import app_engine, in_flow_run, knob
from tasks.states import OrderState
from tasks.store.db import session_scope
from tasks.store.models import Order
from tasks.verify import reason_codes

# What an operator must react to; `journeys_prefect_events = exceptions` (the default) sends
# only these. `all` is about eight events per order: at 100k orders a day that is 800k events,
# more than a SQLite Prefect server persists without stalling its API.
EXCEPTIONS = {OrderState.ON_HOLD, OrderState.CANCELLED}
DEFAULT_MODE = "exceptions"
EVENT_NAMES = {OrderState.ON_HOLD: "held"}
NAMESPACE = uuid.UUID("6f0e3d1c-5b7a-4c51-9a43-3c2f4b1e8d10")


def wanted(to_state: str, mode: str) -> bool:
    return mode == "all" or (mode == "exceptions" and to_state in EXCEPTIONS)


def emit_state_changes(changes: Sequence[dict[str, Any]], outside_runs: bool = False) -> int:
    """Emit `journeys.order.<state>` for each timeline row of kind `state` given.

    Flow runs emit; a caller outside one (the CLI: `outside_runs`) only to a server named by
    PREFECT_API_URL: without one there is no feed to notify, and no temporary server is
    worth starting for it.
    """
    mode = knob("journeys_prefect_events", DEFAULT_MODE)
    changes = [c for c in changes if wanted(c["to_state"], mode)]
    if not changes or not (in_flow_run() or (outside_runs and PREFECT_API_URL.value())):
        return 0
    names = order_names({c["order_id"] for c in changes})
    for change in changes:
        emit_event(**order_event(change, *names[change["order_id"]]))
    return len(changes)


def order_names(order_ids: set[int]) -> dict[int, tuple[str, str, str]]:
    with session_scope(app_engine()) as session:
        rows = session.execute(select(Order.id, Order.external_id, Order.name, Order.source)
                               .where(Order.id.in_(order_ids)))
        return {oid: (external_id, name or external_id, source)
                for oid, external_id, name, source in rows}


def order_event(change: dict[str, Any], external_id: str, name: str, source: str
                ) -> dict[str, Any]:
    """One state change as a Prefect event: the order is the resource; no customer data."""
    to_state, at = change["to_state"], change["at"]
    reason = (change.get("detail") or {}).get("reason")
    return {
        "event": f"journeys.order.{EVENT_NAMES.get(to_state, to_state)}",
        "resource": {"prefect.resource.id": f"journeys.order.{external_id}",
                     "prefect.resource.name": f"Order {name}", "journeys.order.state": to_state},
        "occurred": at,
        "payload": {"from_state": change["from_state"], "to_state": to_state,
                    "actor": change["actor"], "reasons": reason_codes(reason) if reason else []},
        "related": [{"prefect.resource.id": f"journeys.source.{source}",
                     "prefect.resource.role": "source"}],
        "id": uuid.uuid5(NAMESPACE, f"{source}:{external_id}:{to_state}:{at.isoformat()}"),
    }
