"""`journeys simulate`: a seeded store run day by day on a frozen clock through the real flows.

It runs in a workspace of its own (infra/tooling/workspace.py; by default a new SQLite
database under var/simulation), never in the operator's store: its orders, mail and decisions
are made up. Each simulated day the outside world (infra/tooling/simulation.py) writes that
day's shipments, carrier scans and survey answers as files; the ingest flow takes them in; some
customers start a return or an exchange (through the same `open_returns` the returns page
calls); the simulated operator decides open service cases and returns waiting for a look, and
receives the parcels that came back; the daily flow runs as of that day. At the end the rule
audit reads the outbox and the ledger: every violation found is reported.
"""

from __future__ import annotations

import json
import resource
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from flows.common import app_engine, runtime
from flows.intake import ingest
from flows.journey import daily
from flows.parameters import DailyRequest, IngestRequest
from infra.tooling import simulation
from infra.tooling.demo_data import demo_catalog, demo_orders
from infra.tooling.workspace import Workspace, using
from tasks.aftercare.service import open_cases, settle_case
from tasks.audit import AuditRules, audit, message_calendar
from tasks.messaging.governor import governor_config
from tasks.returns.decisions import approve_returns, receive_returns
from tasks.returns.requests import open_returns
from tasks.states import MessageStatus
from tasks.store.db import session_scope
from tasks.store.models import Message, Order

RUN_HOUR = 17  # UTC: morning in the Americas, evening in Europe — outside quiet hours for most


def write(folder: Path, kind: str, day_no: int, records: list[dict[str, Any]]) -> Path | None:
    if not records:
        return None
    path = folder / f"day-{day_no:03d}-{kind}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records))
    return path


def outside_world(folder: Path, day_no: int, day: datetime, world: simulation.Outside) -> None:
    """What carriers and customers send on one day, through the real ingest flow."""
    with session_scope(app_engine()) as session:
        batches = {"shipments": simulation.shipments_for(session, day),
                   "events": simulation.events_for(session, day, world),
                   "feedback": simulation.feedback_for(session, day, world)}
    for kind, records in batches.items():
        if path := write(folder, kind, day_no, records):
            ingest(IngestRequest(kind=kind, source=str(path), as_of=day))


def operator_decides(day: datetime) -> int:
    """The operator accepts each open case's proposal; refunds reverse points exactly."""
    rt = runtime()
    with session_scope(app_engine()) as session:
        cases = open_cases(session)
        for case in cases:
            settle_case(session, case["id"], case["proposed"], "simulated-operator",
                        "accepted proposal", day, rt)
    return len(cases)


def customers_return(day: datetime, world: simulation.Outside) -> int:
    """Customers start returns and exchanges on their order's returns page."""
    rt = runtime()
    with session_scope(app_engine()) as session:
        requests = simulation.returns_for(session, day, world, rt.config)
        return sum(o.created for o in open_returns(session, requests, day, rt))


def operator_handles_returns(day: datetime, world: simulation.Outside) -> dict[str, int]:
    """The operator approves what waits for a look and receives the parcels that arrived."""
    rt = runtime()
    with session_scope(app_engine()) as session:
        approved = approve_returns(session, simulation.returns_waiting(session),
                                   "simulated-operator", "", day, rt)
    with session_scope(app_engine()) as session:
        arrived = simulation.returns_arriving(session, day, world)
        received = receive_returns(session, arrived, day, rt, "simulated-warehouse")
    return {"approved": len(approved), **received}


def audit_rules() -> AuditRules:
    cfg = governor_config(runtime())
    short, long = sorted(cfg.caps, key=lambda cap: cap.hours)[:2]
    return AuditRules(
        cap_short=short.count, cap_short_hours=short.hours,
        cap_long=long.count, cap_long_days=long.hours // 24,
        quiet_start=cfg.quiet_hours.start.hour,
        quiet_end=cfg.quiet_hours.end.hour,
        default_timezone=runtime().config.store.timezone,
        winback_every_days=runtime().config.aftercare.winback.every_days,
    )


DayReport = Callable[[dict[str, Any]], None]  # called after each simulated day


def simulate(workspace: Workspace, days: int, orders: int, seed: int,
             start: datetime | None = None, return_share: float = 0.15,
             exchange_share: float = 0.4, on_day: DayReport | None = None) -> dict[str, Any]:
    """Run the store for `days` days in `workspace`; returns calendars, counts, every
    violation found, the wall time and the peak memory."""
    started = time.perf_counter()
    with using(workspace):
        result = run_days(workspace.inputs, days, orders, seed, start, return_share,
                          exchange_share, on_day)
    return result | {"workspace": str(workspace.root), "database": workspace.database_url,
                     "seconds": round(time.perf_counter() - started, 1),
                     "peak_memory_mb": round(peak_memory_mb())}


def run_days(folder: Path, days: int, orders: int, seed: int, start: datetime | None,
             return_share: float, exchange_share: float, on_day: DayReport | None
             ) -> dict[str, Any]:
    start = (start or datetime.now(UTC)).replace(hour=RUN_HOUR, minute=0, second=0,
                                                 microsecond=0)
    world = simulation.Outside(seed, return_share=return_share, exchange_share=exchange_share)
    ingest(IngestRequest(kind="products", as_of=start,
                         source=str(write(folder, "products", 0, demo_catalog(seed)))))
    ingest(IngestRequest(kind="orders", as_of=start,
                         source=str(write(folder, "orders", 0, demo_orders(orders, seed, start)))))
    decisions, returns = 0, Counter()
    for day_no in range(days):
        day = start + timedelta(days=day_no)
        outside_world(folder, day_no, day, world)
        returns["opened"] += customers_return(day, world)
        decisions += operator_decides(day)
        returns.update(operator_handles_returns(day, world))
        daily(DailyRequest(as_of=day))
        if on_day is not None:
            on_day({"day": day_no + 1, "days": days, "date": day.date().isoformat(),
                    **store_figures(), "returns_opened": returns["opened"],
                    "cases_decided": decisions})
    with session_scope(app_engine()) as session:
        violations = audit(session, audit_rules())
        calendar = message_calendar(session)
    return {"days": days, "orders": orders, "seed": seed, "start": start.isoformat(),
            **store_figures(), "operator_decisions": decisions, "returns": dict(returns),
            "violations": violations, "calendar": calendar}


def store_figures() -> dict[str, Any]:
    """Orders by state and mail sent by template, as the simulated store stands."""
    with session_scope(app_engine()) as session:
        states = dict(session.execute(select(Order.state, func.count()).group_by(
            Order.state).order_by(Order.state)).all())
        sent = dict(session.execute(select(Message.template, func.count()).where(
            Message.status == MessageStatus.SENT).group_by(Message.template)
            .order_by(Message.template)).all())
    return {"orders_by_state": states, "mail_sent": sent}


def peak_memory_mb() -> float:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
