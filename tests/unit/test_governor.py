"""The messaging governor: suppression, consent, caps, quiet hours, priority, expiry.

Rule tests run on SQLite and PostgreSQL with the frozen clock (Wed 18 Nov 2026 10:00 UTC, which
is 02:00 in the store's time zone, America/Los_Angeles: inside the store's quiet hours).
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select

from tasks.messaging.governor import (
    Cap,
    QuietHours,
    cap_hold,
    govern,
    governor_config,
    in_quiet_hours,
    quiet_hold,
)
from tasks.messaging.outbox import claim_due_messages, dispatch, enqueue, message_id_for
from tasks.messaging.transports import SendOutcome
from tasks.messaging.unsubscribe import suppress
from tasks.store.db import make_engine, session_scope
from tasks.store.migrate import ensure_schema
from tasks.store.models import Message
from tests.conftest import FIXTURES, NOW
from tests.factories import add_customer

DAYTIME = datetime(2026, 11, 18, 20, 0, tzinfo=UTC)  # 12:00 in Los Angeles
CONTEXT = json.loads((FIXTURES / "golden" / "confirmation_context.json").read_text())
_keys = iter(range(1, 10**9))


class RecordingTransport:
    """Accepts every mail and remembers who got what (the file transport is tested elsewhere)."""

    def __init__(self) -> None:
        self.mails: list[Any] = []

    def send_batch(self, mails):
        self.mails.extend(mails)
        return [SendOutcome("sent", None) for _ in mails]


def use_recorder(rt) -> RecordingTransport:
    recorder = RecordingTransport()
    rt.__dict__["transport"] = recorder  # Runtime.transport is a cached_property
    return recorder


def row(customer, now, msg_class="marketing", priority=50, to_addr=None, **extra) -> dict:
    """An outbox row; the confirmation template stands in for any message class."""
    key = f"test:{next(_keys)}"
    address = to_addr or (customer.email if customer else "nobody@example.com")
    return {
        "effect_key": key, "order_id": None, "customer_id": customer.id if customer else None,
        "template": "confirmation", "version": 1, "msg_class": msg_class, "priority": priority,
        "to_addr": address, "message_id": message_id_for(key, "northwind.example"),
        "context": CONTEXT, "not_before": now, **extra,
    }


def sent_before(session, customer, at: datetime) -> None:
    """A marketing message the customer already received at `at`."""
    enqueue(session, [row(customer, at)], at)
    session.flush()
    message = session.scalars(select(Message).order_by(Message.id.desc()).limit(1)).one()
    message.status, message.sent_at = "sent", at
    session.flush()


def decide(session, now, rt):
    rows = claim_due_messages(session, now, 1000)
    decision = govern(session, rows, now, rt)
    ids = {r.id: r.effect_key for r in rows}
    admitted = [ids[r.id] for r in decision.admitted]
    held = {ids[v.row_id]: v for v in decision.held}
    return admitted, held


def keys_in(session) -> list[str]:
    return list(session.scalars(select(Message.effect_key).order_by(Message.id)))


# --- suppression and consent ----------------------------------------------------------------


def test_suppressed_addresses_get_no_marketing_and_bounces_no_mail_at_all(engine, runtime):
    with session_scope(engine) as session:
        unsub = add_customer(session, NOW, "unsub@example.com", accepts_marketing=True)
        bounced = add_customer(session, NOW, "bounced@example.com", accepts_marketing=True)
        plain = add_customer(session, NOW, "plain@example.com", accepts_marketing=True)
        suppress(session, "Unsub@Example.com", "unsubscribe", NOW, "link")
        suppress(session, "bounced@example.com", "bounce", NOW, "ses")
        enqueue(session, [row(c, DAYTIME, cls) for c in (unsub, bounced, plain)
                          for cls in ("marketing", "transactional")], NOW)
        m_unsub, t_unsub, m_bounce, t_bounce, m_plain, t_plain = keys_in(session)
        admitted, held = decide(session, DAYTIME, runtime)

    assert sorted(admitted) == sorted([t_unsub, m_plain, t_plain])
    assert (held[m_unsub].status, held[m_unsub].reason) == ("skipped", "suppressed: unsubscribe")
    assert (held[m_bounce].status, held[m_bounce].reason) == ("skipped", "suppressed: bounce")
    assert (held[t_bounce].status, held[t_bounce].reason) == ("skipped", "suppressed: bounce")


def test_marketing_needs_consent(engine, runtime):
    with session_scope(engine) as session:
        no = add_customer(session, NOW, "no@example.com", accepts_marketing=False)
        yes = add_customer(session, NOW, "yes@example.com", accepts_marketing=True)
        enqueue(session, [row(no, DAYTIME), row(no, DAYTIME, "transactional"), row(yes, DAYTIME),
                          row(None, DAYTIME, to_addr="YES@example.com"),
                          row(None, DAYTIME, to_addr="stranger@example.com")], NOW)
        m_no, t_no, m_yes, by_address, stranger = keys_in(session)
        admitted, held = decide(session, DAYTIME, runtime)

    assert sorted(admitted) == sorted([t_no, m_yes])  # by_address: same customer, capped
    assert held[m_no].reason == held[stranger].reason == "no marketing consent"
    assert held[by_address].reason == "deferred: frequency cap: 1 per 16h"


def test_a_topic_turned_off_skips_only_that_topics_marketing(engine, runtime):
    from tasks.storefront.preferences import record_choices

    with session_scope(engine) as session:
        ada = add_customer(session, NOW, "ada@example.com", accepts_marketing=True)
        bob = add_customer(session, NOW, "bob@example.com", accepts_marketing=True)
        record_choices(session, "ADA@example.com", {"offers": False, "reviews": True}, NOW, "page")
        enqueue(session, [row(ada, DAYTIME, template="cross_sell", priority=10),
                          row(ada, DAYTIME, template="review_request", priority=20),
                          row(ada, DAYTIME, "transactional", template="cross_sell"),
                          row(bob, DAYTIME, template="cross_sell")], NOW)
        ada_offer, ada_review, ada_transactional, bob_offer = keys_in(session)
        statements = count_statements(engine, lambda: decide(session, DAYTIME, runtime))
        admitted, held = decide(session, DAYTIME, runtime)

    assert (held[ada_offer].status, held[ada_offer].reason) == ("skipped", "preference: offers off")
    assert sorted(admitted) == sorted([ada_review, ada_transactional, bob_offer])
    assert statements == 5  # claim + suppressions, customers, history, preferences


# --- frequency caps and priority ----------------------------------------------------------


def test_one_per_16_hours_defers_until_the_cap_frees_with_an_expiry(engine, runtime):
    with session_scope(engine) as session:
        customer = add_customer(session, NOW, "capped@example.com", accepts_marketing=True)
        sent_before(session, customer, DAYTIME - timedelta(hours=10))
        enqueue(session, [row(customer, DAYTIME), row(customer, DAYTIME, "transactional")],
                DAYTIME - timedelta(hours=1))
        marketing, transactional = keys_in(session)[1:]
        admitted, held = decide(session, DAYTIME, runtime)

    assert admitted == [transactional]  # transactional mail is never capped
    verdict = held[marketing]
    assert (verdict.status, verdict.reason) == ("pending", "deferred: frequency cap: 1 per 16h")
    assert verdict.not_before == DAYTIME + timedelta(hours=6)
    assert verdict.expires_at == DAYTIME - timedelta(hours=1) + timedelta(hours=72)


def test_three_per_week(engine, runtime):
    with session_scope(engine) as session:
        customer = add_customer(session, NOW, "weekly@example.com", accepts_marketing=True)
        for days in (6, 4, 2):
            sent_before(session, customer, DAYTIME - timedelta(days=days))
        enqueue(session, [row(customer, DAYTIME)], DAYTIME)
        admitted, held = decide(session, DAYTIME, runtime)

    (verdict,) = held.values()
    assert admitted == [] and verdict.reason == "deferred: frequency cap: 3 per 168h"
    assert verdict.not_before == DAYTIME + timedelta(days=1)  # the oldest leaves the window


def test_failed_and_old_mail_does_not_count(engine, runtime):
    with session_scope(engine) as session:
        customer = add_customer(session, NOW, "free@example.com", accepts_marketing=True)
        sent_before(session, customer, DAYTIME - timedelta(hours=16))  # exactly out of window
        enqueue(session, [row(customer, DAYTIME - timedelta(hours=2))], NOW)
        session.scalars(select(Message).order_by(Message.id.desc())).first().status = "failed"
        enqueue(session, [row(customer, DAYTIME)], DAYTIME)
        admitted, held = decide(session, DAYTIME, runtime)
    assert len(admitted) == 1 and held == {}


def test_lower_priority_number_wins_within_a_batch(engine, runtime):
    with session_scope(engine) as session:
        customer = add_customer(session, NOW, "busy@example.com", accepts_marketing=True)
        enqueue(session, [row(customer, DAYTIME, priority=p) for p in (70, 40, 55)], NOW)
        cross_sell, review, loyalty = keys_in(session)
        admitted, held = decide(session, DAYTIME, runtime)

    assert admitted == [review]
    assert {held[k].reason for k in (cross_sell, loyalty)} == {"deferred: frequency cap: 1 per 16h"}


# --- quiet hours ------------------------------------------------------------------------------


def test_quiet_hours_hold_marketing_in_the_recipients_time_zone(engine, runtime):
    with session_scope(engine) as session:
        store_tz = add_customer(session, NOW, "la@example.com", accepts_marketing=True)
        berlin = add_customer(session, NOW, "berlin@example.com", accepts_marketing=True,
                              timezone="Europe/Berlin")
        bogus = add_customer(session, NOW, "bogus@example.com", accepts_marketing=True,
                             timezone="Mars/Olympus")
        enqueue(session, [row(store_tz, NOW), row(store_tz, NOW, "transactional"),
                          row(berlin, NOW), row(bogus, NOW)], NOW)
        la_marketing, la_transactional, berlin_marketing, bogus_marketing = keys_in(session)
        admitted, held = decide(session, NOW, runtime)  # 02:00 in LA, 11:00 in Berlin

    assert sorted(admitted) == sorted([la_transactional, berlin_marketing])
    for key in (la_marketing, bogus_marketing):  # unknown zone → the store's
        assert held[key].reason == "deferred: quiet hours 21:00-08:00 America/Los_Angeles"
        assert held[key].not_before == datetime(2026, 11, 18, 16, 0, tzinfo=UTC)  # 08:00 PST


def test_in_quiet_hours_wraps_midnight_or_not():
    night = QuietHours(start=time(21), end=time(8))
    assert [in_quiet_hours(time(h), night) for h in (20, 21, 0, 7, 8)] == [
        False, True, True, True, False]
    lunch = QuietHours(start=time(12), end=time(13))
    assert [in_quiet_hours(time(h), lunch) for h in (11, 12, 13)] == [False, True, False]
    assert not in_quiet_hours(time(3), QuietHours(start=time(0), end=time(0)))


def test_quiet_hold_ends_at_local_morning_across_a_dst_change():
    zone = ZoneInfo("America/New_York")
    # Sun 8 Mar 2026, 02:00 local clocks jump to 03:00; at 23:00 UTC Sat it is 18:00 EST.
    late = datetime(2026, 3, 8, 3, 30, tzinfo=UTC)  # 22:30 EST Saturday
    until, _ = quiet_hold(late, zone, QuietHours())
    assert until.astimezone(zone).replace(tzinfo=None) == datetime(2026, 3, 8, 8, 0)
    assert until == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)  # 08:00 EDT
    assert quiet_hold(datetime(2026, 3, 8, 15, 0, tzinfo=UTC), zone, QuietHours()) is None


def test_cap_hold_takes_the_latest_freeing_cap():
    caps = [Cap(count=1, hours=16), Cap(count=3, hours=168)]
    sends = [NOW - timedelta(days=5), NOW - timedelta(days=3), NOW - timedelta(hours=1)]
    until, why = cap_hold(sends, NOW, caps)
    assert until == NOW + timedelta(days=2) and why == "frequency cap: 1 per 16h, 3 per 168h"
    assert cap_hold([NOW - timedelta(hours=17)], NOW, caps) is None


# --- expiry ------------------------------------------------------------------------------------


def test_expired_rows_and_holds_past_the_expiry(engine, runtime):
    with session_scope(engine) as session:
        customer = add_customer(session, NOW, "late@example.com", accepts_marketing=True)
        other = add_customer(session, NOW, "other@example.com", accepts_marketing=True)
        sent_before(session, other, DAYTIME - timedelta(hours=1))
        enqueue(session, [
            row(customer, DAYTIME, expires_at=DAYTIME - timedelta(minutes=1),
                reason="deferred: quiet hours"),
            row(other, DAYTIME, expires_at=DAYTIME + timedelta(hours=3)),
        ], DAYTIME - timedelta(days=1))
        stale, capped = keys_in(session)[1:]
        admitted, held = decide(session, DAYTIME, runtime)

    assert admitted == []
    assert held[stale].status == "expired"
    assert held[stale].reason == "expired: not sent by 2026-11-18 19:59 UTC (deferred: quiet hours)"
    assert held[capped].status == "expired"  # the cap frees in 15 h, after its expiry
    assert held[capped].reason.startswith("expired: frequency cap: 1 per 16h, held past")


def test_defer_expiry_hours_per_template(runtime):
    expiry = governor_config(runtime).defer_expiry_hours
    assert expiry.hours_for("confirmation", "marketing") == 72
    assert expiry.hours_for("birthday", "marketing") == 48


# --- through dispatch -----------------------------------------------------------------------


def count_statements(engine, action) -> int:
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return len(statements)


def test_dispatch_stores_every_decision_and_sends_deferred_mail_later(engine, runtime):
    recorder = use_recorder(runtime)
    with session_scope(engine) as session:
        a = add_customer(session, NOW, "a@example.com", accepts_marketing=True)
        b = add_customer(session, NOW, "b@example.com", accepts_marketing=False)
        enqueue(session, [row(a, NOW, priority=40), row(a, NOW, priority=60), row(b, NOW),
                          row(b, NOW, "transactional")], NOW)
    with session_scope(engine) as session:
        first = dispatch(session, NOW, runtime)
    with session_scope(engine) as session:
        morning = dispatch(session, datetime(2026, 11, 18, 16, 0, tzinfo=UTC), runtime)
    with session_scope(engine) as session:
        rows = {m.priority if m.customer_id == a.id else m.msg_class: m
                for m in session.scalars(select(Message))}

    assert first.as_dict() == {"sent": 1, "failed": 0, "deferred": 2, "unknown": 0, "skipped": 1}
    assert (rows["marketing"].status, rows["marketing"].reason) == (
        "skipped", "no marketing consent")
    assert (rows[40].status, rows[40].sent_at) == ("sent", datetime(2026, 11, 18, 16, tzinfo=UTC))
    assert rows[40].attempts == 1  # holding a message is not a send attempt
    assert rows[60].status == "pending" and rows[60].reason == "deferred: frequency cap: 1 per 16h"
    assert rows[60].not_before == datetime(2026, 11, 19, 8, 0, tzinfo=UTC)
    assert morning.sent == 1 and morning.deferred == 1
    assert [m.recipient for m in recorder.mails] == ["b@example.com", "a@example.com"]


def test_governor_reads_are_constant_per_batch(engine, runtime):
    use_recorder(runtime)

    def statements_for(customers: int) -> int:
        with session_scope(engine) as session:
            people = [add_customer(session, NOW, f"n{customers}-{i}@example.com",
                                   accepts_marketing=True) for i in range(customers)]
            for person in people:
                sent_before(session, person, DAYTIME - timedelta(days=2))
            enqueue(session, [row(p, DAYTIME, priority=q) for p in people for q in (40, 60)],
                    DAYTIME)
        with session_scope(engine) as session:
            return count_statements(engine, lambda: dispatch(session, DAYTIME, runtime))

    assert statements_for(1) == statements_for(7)


# --- property: a simulated week -------------------------------------------------------------

ZONES = [None, "Europe/Berlin", "Asia/Tokyo", "America/New_York", "Australia/Sydney"]
START = datetime(2026, 11, 16, 0, 0, tzinfo=UTC)  # Monday
schedules = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 167), st.sampled_from([40, 50, 60, 70])),
    max_size=20,
)


def local_hour_is_quiet(at: datetime, zone_name: str | None) -> bool:
    zone = ZoneInfo(zone_name or "America/Los_Angeles")
    return in_quiet_hours(at.astimezone(zone).time(), QuietHours())


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(schedule=schedules, zones=st.lists(st.sampled_from(ZONES), min_size=3, max_size=3),
       consents=st.lists(st.booleans(), min_size=3, max_size=3))
def test_a_week_of_hourly_dispatch_never_breaks_caps_or_quiet_hours(
    runtime, schedule, zones, consents
):
    recorder = use_recorder(runtime)
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'week.db'}")
        ensure_schema(engine)
        with session_scope(engine) as session:
            people = [add_customer(session, START, f"p{i}@example.com", timezone=zones[i],
                                   accepts_marketing=consents[i]) for i in range(3)]
            ids = [p.id for p in people]
        for hour in range(168 + 72):
            now = START + timedelta(hours=hour)
            due = [row(people[c], now, priority=p) for c, h, p in schedule if h == hour]
            with session_scope(engine) as session:
                enqueue(session, due, now)
                dispatch(session, now, runtime)
        with session_scope(engine) as session:
            messages = list(session.scalars(select(Message)))
        engine.dispose()

    assert len(recorder.mails) == sum(m.status == "sent" for m in messages)
    for message in messages:
        assert message.status in ("sent", "pending", "skipped", "expired")
        assert message.reason or message.status == "sent"
    for i, customer_id in enumerate(ids):
        sent = sorted(m.sent_at for m in messages if m.customer_id == customer_id
                      and m.status == "sent")
        if not consents[i]:
            assert sent == []
        for at in sent:
            assert not local_hour_is_quiet(at, zones[i]), (at, zones[i])
            for cap in governor_config(runtime).caps:
                in_window = [s for s in sent if at <= s < at + cap.window]
                assert len(in_window) <= cap.count, (cap.label, sent)
