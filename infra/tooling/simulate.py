"""`journeys simulate`: a seeded store run day by day on a frozen clock through the real flows.

Each simulated day the outside world (infra/tooling/simulation.py) writes that day's shipments,
carrier scans and survey answers as files; the ingest flow takes them in; some customers start
a return or an exchange (through the same `open_returns` the returns page calls); the
simulated operator decides open service cases and returns waiting for a look, and receives the
parcels that came back; the daily flow runs as of that day. At the end the rule audit reads
the outbox and the ledger: every violation found is reported.
"""

from __future__ import annotations

import json
from collections import Counter
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
from tasks.aftercare.service import open_cases, settle_case
from tasks.audit import AuditRules, audit, message_calendar
from tasks.messaging.governor import governor_config
from tasks.returns.decisions import approve_returns, receive_returns
from tasks.returns.requests import open_returns
from tasks.states import MessageStatus
from tasks.store.db import session_scope
from tasks.store.models import Message

SIM_DIR = Path("var/sim")
RUN_HOUR = 17  # UTC: morning in the Americas, evening in Europe — outside quiet hours for most


def write(kind: str, day_no: int, records: list[dict[str, Any]]) -> Path | None:
    if not records:
        return None
    path = SIM_DIR / f"day-{day_no:03d}-{kind}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records))
    return path


def outside_world(day_no: int, day: datetime, world: simulation.Outside) -> None:
    """What carriers and customers send on one day, through the real ingest flow."""
    with session_scope(app_engine()) as session:
        batches = {"shipments": simulation.shipments_for(session, day),
                   "events": simulation.events_for(session, day, world),
                   "feedback": simulation.feedback_for(session, day, world)}
    for kind, records in batches.items():
        if path := write(kind, day_no, records):
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


def simulate(days: int, orders: int, seed: int, start: datetime | None = None,
             return_share: float = 0.15, exchange_share: float = 0.4) -> dict[str, Any]:
    """Run the store for `days` days; returns calendars, counts and every violation found."""
    start = (start or datetime.now(UTC)).replace(hour=RUN_HOUR, minute=0, second=0,
                                                 microsecond=0)
    world = simulation.Outside(seed, return_share=return_share, exchange_share=exchange_share)
    SIM_DIR.mkdir(parents=True, exist_ok=True)
    ingest(IngestRequest(kind="products", source=str(write("products", 0, demo_catalog(seed))),
                         as_of=start))
    ingest(IngestRequest(kind="orders", as_of=start,
                         source=str(write("orders", 0, demo_orders(orders, seed, start)))))
    decisions, returns = 0, Counter()
    for day_no in range(days):
        day = start + timedelta(days=day_no)
        outside_world(day_no, day, world)
        returns["opened"] += customers_return(day, world)
        decisions += operator_decides(day)
        returns.update(operator_handles_returns(day, world))
        daily(DailyRequest(as_of=day))
    with session_scope(app_engine()) as session:
        violations = audit(session, audit_rules())
        calendar = message_calendar(session)
        sent = dict(session.execute(select(Message.template, func.count()).where(
            Message.status == MessageStatus.SENT).group_by(Message.template)).all())
    return {"days": days, "orders": orders, "seed": seed, "start": start.isoformat(),
            "operator_decisions": decisions, "returns": dict(returns), "mail_sent": sent,
            "violations": violations, "calendar": calendar}
