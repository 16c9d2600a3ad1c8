"""Loyalty ledger: earn, approve, reverse, balances and tiers, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select

from tasks.config import load_config
from tasks.links import Purpose, link_url
from tasks.loyalty import (
    APPROVE_STEP,
    EARN_STEP,
    Refund,
    approve,
    balances,
    earn,
    liability,
    reverse_refunds,
    update_tiers,
)
from tasks.messaging.render import renderer_for
from tasks.runtime import Runtime
from tasks.store.db import session_scope
from tasks.store.models import Customer, LoyaltyEntry, Message, Quarantine, Step
from tests.factories import add_customer, add_order

ROOT = Path(__file__).resolve().parents[2]
_emails = count(1)
WINDOW = timedelta(days=30)


def fresh_email() -> str:
    return f"member{next(_emails)}@example.com"


def delivered_order(session, now, lines=(("TEE-1", 2, "25.00"),), accepts=True, customer=None,
                    **fields):
    """A delivered order with `loyalty_earn` due now; placed five days before."""
    customer = customer or add_customer(session, now, fresh_email(), accepts_marketing=accepts)
    fields.setdefault("placed_at", now - timedelta(days=5))
    fields.setdefault("delivered_at", now)
    return add_order(session, now, lines=list(lines), state="delivered", step=EARN_STEP,
                     customer=customer, email=customer.email, **fields)


def entries_of(session, order_id):
    query = select(LoyaltyEntry).where(LoyaltyEntry.order_id == order_id).order_by(LoyaltyEntry.id)
    return session.scalars(query).all()


def step_of(session, order_id, name):
    query = select(Step).where(Step.order_id == order_id, Step.name == name)
    return session.scalars(query).one_or_none()


def runtime_with(tmp_path: Path, runtime: Runtime, loyalty_yaml: str, name: str) -> Runtime:
    """A runtime whose config folder is a copy of configs/ with another loyalty.yaml."""
    folder = tmp_path / name
    shutil.copytree(ROOT / "configs", folder)
    (folder / "loyalty.yaml").write_text(loyalty_yaml, encoding="utf-8")
    return Runtime(settings=runtime.settings, config=load_config(folder))


RULES_V1 = """
rules:
  - {version: "v1", valid_from: 2026-01-01, points_per_unit: 1, unit: "1.00"}
return_window_days: 30
tiers: [{name: bronze, min_spend: "0"}, {name: silver, min_spend: "500"}]
enrollment: {auto_enroll_with_consent: AUTO}
"""
RULES_V2 = """
rules:
  - {version: "v1", valid_from: 2026-01-01, points_per_unit: 1, unit: "1.00"}
  - {version: "v2", valid_from: 2026-06-01, points_per_unit: 10, unit: "1.00"}
return_window_days: 30
tiers: [{name: bronze, min_spend: "0"}, {name: silver, min_spend: "500"}]
"""


# --- earn ---------------------------------------------------------------------------------


def test_earn_excludes_shipping_tax_gift_cards_and_points_paid(engine, runtime, now):
    with session_scope(engine) as session:
        order = delivered_order(
            session, now, lines=[("TEE-1", 2, "25.00"), ("MUG-1", 1, "18.00"), ("GC", 1, "50.00")],
            discounts=Decimal("11.30"), shipping=Decimal("7.00"), tax=Decimal("4.00"),
            note_attributes={"points_redeemed_amount": "10.00"},
        )
        order.lines[0].total_discount = Decimal("5.00")  # the rest (6.30) is order-level
        order.lines[2].gift_card = True
        order_id = order.id
    with session_scope(engine) as session:
        result = earn(session, [order_id], now, runtime)

    # goods 45 + 18 (gift card out), minus 6.30 order discount, minus 10 paid with points
    assert (result.advanced, result.details["points_pending"]) == (1, 46)
    with session_scope(engine) as session:
        [entry] = entries_of(session, order_id)
        approve_step = step_of(session, order_id, APPROVE_STEP)
        earn_step = step_of(session, order_id, EARN_STEP)
    assert (entry.source_key, entry.kind, entry.status) == (f"order:{order_id}:earn", "earn",
                                                            "pending")
    assert (entry.points, entry.basis, entry.rule_version) == (46, Decimal("46.70"), "2026-01")
    assert entry.available_at == now + WINDOW
    assert (approve_step.status, approve_step.due_at) == ("pending", now + WINDOW)
    assert earn_step.status == "done"


def test_tax_included_prices_earn_on_the_net_value(engine, runtime, now):
    with session_scope(engine) as session:
        # 121.00 goods + 12.10 shipping, both with 21 % VAT included: 23.10 tax in total
        order_id = delivered_order(
            session, now, lines=[("TEE-1", 1, "121.00")], shipping=Decimal("12.10"),
            tax=Decimal("23.10"), taxes_included=True, currency="EUR",
        ).id
    with session_scope(engine) as session:
        earn(session, [order_id], now, runtime)
    with session_scope(engine) as session:
        [entry] = entries_of(session, order_id)
    assert (entry.basis, entry.points) == (Decimal("100.00"), 100)


def test_earn_is_idempotent_and_waits_for_delivery(engine, runtime, now):
    with session_scope(engine) as session:
        delivered_id = delivered_order(session, now).id
        transit_id = delivered_order(session, now, delivered_at=None).id
    with session_scope(engine) as session:
        first = earn(session, [delivered_id, transit_id], now, runtime)
    with session_scope(engine) as session:
        second = earn(session, [delivered_id, transit_id], now + timedelta(hours=1), runtime)
    assert (first.advanced, first.skipped) == (1, 1)
    assert (second.details["entries"], second.details["points_pending"]) == (0, 0)
    with session_scope(engine) as session:
        assert len(entries_of(session, delivered_id)) == 1
        assert entries_of(session, transit_id) == []
        assert step_of(session, transit_id, EARN_STEP).status == "pending"


def test_cancelled_or_refunded_orders_earn_nothing(engine, runtime, now):
    with session_scope(engine) as session:
        refunded = delivered_order(session, now, financial_status="refunded").id
        cancelled = delivered_order(session, now, cancelled_at=now).id
    with session_scope(engine) as session:
        result = earn(session, [refunded, cancelled], now, runtime)
    assert (result.advanced, result.closed) == (0, 2)
    with session_scope(engine) as session:
        assert step_of(session, refunded, EARN_STEP).reason == "no points: order refunded"
        assert step_of(session, cancelled, EARN_STEP).status == "closed"
        assert entries_of(session, refunded) == entries_of(session, cancelled) == []


def test_a_bad_points_paid_attribute_is_quarantined(engine, runtime, now):
    with session_scope(engine) as session:
        order_id = delivered_order(
            session, now, note_attributes={"points_redeemed_amount": "lots"}
        ).id
    with session_scope(engine) as session:
        result = earn(session, [order_id], now, runtime)
    with session_scope(engine) as session:
        earn(session, [order_id], now, runtime)  # still held: not quarantined twice
    assert result.quarantined == 1
    with session_scope(engine) as session:
        [record] = session.scalars(select(Quarantine)).all()
        step = step_of(session, order_id, EARN_STEP)
        assert entries_of(session, order_id) == []
    assert record.kind == "loyalty_order"
    assert record.reasons == [{"field": "note_attributes.points_redeemed_amount",
                               "reason": "not an amount: 'lots'"}]
    assert step.status == "held"


def test_batch_uses_a_constant_number_of_statements(engine, runtime, now):
    def statements_for(n: int) -> int:
        with session_scope(engine) as session:
            ids = [delivered_order(session, now, accepts=i % 2 == 0).id for i in range(n)]
        seen: list[str] = []
        listener = lambda *args: seen.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            with session_scope(engine) as session:
                earn(session, ids, now, runtime)
                approve(session, ids, now + WINDOW, runtime)
                reverse_refunds(session, [Refund(i, Decimal("5"), "r1") for i in ids], now,
                                runtime)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        return len(seen)

    assert statements_for(2) == statements_for(12)


# --- enrolment and invites ----------------------------------------------------------------


def test_consenting_customers_are_enrolled_and_others_are_not_invited(engine, runtime, now):
    with session_scope(engine) as session:
        member = delivered_order(session, now, accepts=True)
        stranger = delivered_order(session, now, accepts=False)
        ids, customers = [member.id, stranger.id], (member.customer_id, stranger.customer_id)
    with session_scope(engine) as session:
        result = earn(session, ids, now, runtime)
    with session_scope(engine) as session:
        enrolled = {c.id: c.loyalty_enrolled_at for c in session.scalars(select(Customer))}
        assert session.scalars(select(Message)).all() == []
        points = balances(session, list(customers))
    assert result.details["enrolled"] == 1
    assert enrolled[customers[0]] == now and enrolled[customers[1]] is None
    # points are recorded for everyone; a customer who joins later finds them
    assert points[customers[1]] == {"pending": 50, "approved": 0}


def test_without_auto_enrolment_a_consenting_customer_gets_one_invite(
    engine, runtime, now, tmp_path
):
    rt = runtime_with(tmp_path, runtime, RULES_V1.replace("AUTO", "false"), "no-auto")
    with session_scope(engine) as session:
        customer = add_customer(session, now, fresh_email(), accepts_marketing=True)
        first = delivered_order(session, now, customer=customer).id
        second = delivered_order(session, now, customer=customer).id
        later = delivered_order(session, now, customer=customer).id
    with session_scope(engine) as session:
        earn(session, [first, second], now, rt)
    with session_scope(engine) as session:
        earn(session, [later], now + timedelta(days=1), rt)
    with session_scope(engine) as session:
        [invite] = session.scalars(select(Message)).all()
        assert session.get(Customer, customer.id).loyalty_enrolled_at is None
    assert invite.effect_key == f"customer:{customer.id}:loyalty_invite:v1"
    assert (invite.template, invite.msg_class, invite.order_id) == ("loyalty_invite",
                                                                   "marketing", first)
    rendered = renderer_for(rt.config).render(invite.template, invite.context)
    assert rendered.subject == "Join Northwind Outfitters rewards"
    join_url = link_url(rt.config.store.links_base_url, rt.settings.secret_key, Purpose.LOYALTY,
                        customer.id, now)
    assert "/l/" in join_url and "/rewards" not in rendered.text
    assert invite.context["loyalty"]["join_url"] == join_url and join_url in rendered.text


# --- rule versions ------------------------------------------------------------------------


def test_reversal_uses_the_rule_stored_at_purchase(engine, runtime, now, tmp_path):
    before = runtime_with(tmp_path, runtime, RULES_V1.replace("AUTO", "true"), "v1")
    after = runtime_with(tmp_path, runtime, RULES_V2, "v2")
    with session_scope(engine) as session:
        old = delivered_order(session, now, placed_at=datetime(2026, 5, 31, 23, tzinfo=UTC)).id
        new = delivered_order(session, now, placed_at=datetime(2026, 6, 1, 1, tzinfo=UTC)).id
    with session_scope(engine) as session:
        earn(session, [old], now, before)
    with session_scope(engine) as session:
        earn(session, [new], now, after)  # the new rule is in force for the later order
        reverse_refunds(session, [Refund(old, Decimal("20.00"), "refund-1")], now, after)
    with session_scope(engine) as session:
        old_entries = entries_of(session, old)
        [new_earn] = entries_of(session, new)
    assert [(e.kind, e.points, e.rule_version) for e in old_entries] == [
        ("earn", 50, "v1"), ("reverse", -20, "v1")
    ]
    assert (new_earn.points, new_earn.rule_version) == (500, "v2")


# --- approve ------------------------------------------------------------------------------


def test_points_are_approved_after_the_window_once(engine, runtime, now):
    with session_scope(engine) as session:
        order = delivered_order(session, now)
        order_id, customer_id = order.id, order.customer_id
    with session_scope(engine) as session:
        earn(session, [order_id], now, runtime)
    with session_scope(engine) as session:
        early = approve(session, [order_id], now + WINDOW - timedelta(seconds=1), runtime)
    with session_scope(engine) as session:
        due = approve(session, [order_id], now + WINDOW, runtime)
    with session_scope(engine) as session:
        again = approve(session, [order_id], now + WINDOW + timedelta(days=1), runtime)
    assert (early.advanced, early.skipped) == (0, 1)
    assert (due.advanced, due.details["points_approved"]) == (1, 50)
    assert again.advanced == 0
    with session_scope(engine) as session:
        entries = entries_of(session, order_id)
        step = step_of(session, order_id, APPROVE_STEP)
        assert balances(session, [customer_id])[customer_id] == {"pending": 0, "approved": 50}
        assert liability(session) == {"pending": 0, "approved": 50}
    assert [(e.source_key, e.status, e.points) for e in entries[1:]] == [
        (f"order:{order_id}:approve:release", "pending", -50),
        (f"order:{order_id}:approve", "approved", 50),
    ]
    assert step.status == "done"


def test_approve_of_an_order_without_points_closes_the_step(engine, runtime, now):
    with session_scope(engine) as session:
        order_id = delivered_order(session, now).id
        session.add(Step(order_id=order_id, name=APPROVE_STEP, due_at=now, status="pending",
                         attempts=0, updated_at=now))
    with session_scope(engine) as session:
        result = approve(session, [order_id], now, runtime)
    assert result.closed == 1
    with session_scope(engine) as session:
        assert step_of(session, order_id, APPROVE_STEP).reason == "nothing earned"


# --- reverse ------------------------------------------------------------------------------


def earned_order(engine, runtime, now, price="46.70"):
    with session_scope(engine) as session:
        order = delivered_order(session, now, lines=[("TEE-1", 1, price)])
        ids = order.id, order.customer_id
    with session_scope(engine) as session:
        earn(session, [ids[0]], now, runtime)
    return ids


def test_partial_refunds_are_proportional_and_add_up_exactly(engine, runtime, now):
    order_id, customer_id = earned_order(engine, runtime, now)  # 46 points on 46.70
    amounts = [("r1", "10.00"), ("r2", "20.00"), ("r1", "99.00"), ("r3", "16.70"),
               ("r4", "5.00")]
    points = []
    for key, amount in amounts:
        with session_scope(engine) as session:
            refund = Refund(order_id, Decimal(amount), key)
            result = reverse_refunds(session, [refund], now, runtime)
            points.append(result.details["points_reversed"])
    # 46 × 10/46.7 → 9; cumulative 30 → 29 (20 more); r1 again: no-op; 46.70 → all 46 (17 more)
    assert points == [9, 20, 0, 17, 0]
    with session_scope(engine) as session:
        entries = entries_of(session, order_id)
        assert balances(session, [customer_id])[customer_id] == {"pending": 0, "approved": 0}
    reversals = [e for e in entries if e.kind == "reverse"]
    assert [e.source_key for e in reversals] == [
        f"order:{order_id}:reverse:{k}" for k in ("r1", "r2", "r3", "r4")
    ]
    assert {e.status for e in reversals} == {"pending"}


def test_full_refund_after_approval_reverses_everything_from_approved(engine, runtime, now):
    order_id, customer_id = earned_order(engine, runtime, now, price="80.00")
    with session_scope(engine) as session:
        partial = Refund(order_id, Decimal("30.00"), "partial")
        reverse_refunds(session, [partial], now, runtime)  # 30 pending
    with session_scope(engine) as session:
        approve(session, [order_id], now + WINDOW, runtime)  # moves the remaining 50
    with session_scope(engine) as session:
        rest = Refund(order_id, Decimal("85.00"), "rest")
        result = reverse_refunds(session, [rest], now + WINDOW, runtime)
    with session_scope(engine) as session:
        entries = entries_of(session, order_id)
        assert balances(session, [customer_id])[customer_id] == {"pending": 0, "approved": 0}
    assert result.details["points_reversed"] == 50
    assert [(e.kind, e.status, e.points) for e in entries] == [
        ("earn", "pending", 80), ("reverse", "pending", -30), ("approve", "pending", -50),
        ("approve", "approved", 50), ("reverse", "approved", -50),
    ]


def test_refunds_in_one_batch_and_bad_refunds(engine, runtime, now):
    order_id, _ = earned_order(engine, runtime, now, price="100.00")
    refunds = [Refund(order_id, Decimal("60"), "a"), Refund(order_id, Decimal("60"), "b"),
               Refund(order_id, Decimal("60"), "a"), Refund(order_id, Decimal("-1"), "c"),
               Refund(order_id, Decimal("NaN"), "d"), Refund(order_id, Decimal("1"), ""),
               Refund(order_id + 999, Decimal("5"), "e")]
    with session_scope(engine) as session:
        result = reverse_refunds(session, refunds, now, runtime)
    assert (result.advanced, result.quarantined, result.details["duplicates"],
            result.details["not_earned"], result.details["points_reversed"]) == (2, 3, 1, 1, 100)
    with session_scope(engine) as session:
        reasons = sorted(q.reasons[0]["field"] for q in session.scalars(select(Quarantine)))
    assert reasons == ["amount", "amount", "key"]


# --- tiers --------------------------------------------------------------------------------


def test_tiers_follow_rolling_spend_with_a_mail_on_upgrade(engine, runtime, now):
    with session_scope(engine) as session:
        customer = add_customer(session, now, fresh_email(), accepts_marketing=True)
        old = delivered_order(session, now, lines=[("RING-1", 1, "900.00")], customer=customer,
                              delivered_at=now - timedelta(days=400))
        recent = delivered_order(session, now, lines=[("TEE-1", 1, "600.00")], customer=customer)
        ids, customer_id = [old.id, recent.id], customer.id
    with session_scope(engine) as session:
        earn(session, ids, now, runtime)
        first = update_tiers(session, [customer_id], now, runtime)
    with session_scope(engine) as session:
        again = update_tiers(session, [customer_id], now, runtime)
        reverse_refunds(session, [Refund(recent.id, Decimal("200"), "return-1")], now, runtime)
        down = update_tiers(session, [customer_id], now + timedelta(days=1), runtime)
    assert (first.advanced, first.details["tier_mails_enqueued"]) == (1, 1)
    assert again.advanced == 0
    assert (down.advanced, down.details["tier_mails_enqueued"]) == (1, 0)  # no downgrade mail
    with session_scope(engine) as session:
        [mail] = session.scalars(select(Message)).all()
        assert session.get(Customer, customer_id).loyalty_tier == "bronze"
    assert mail.effect_key == f"customer:{customer_id}:loyalty_update:silver:2026-11-18:v1"
    assert mail.context["loyalty"] == {
        "tier": "silver", "previous_tier": None, "pending": 1500, "approved": 0,
        "url": link_url(runtime.config.store.links_base_url, runtime.settings.secret_key,
                        Purpose.LOYALTY, customer_id, now),
    }
    rendered = renderer_for(runtime.config).render(mail.template, mail.context)
    assert rendered.subject == "You have 0 points"
    assert "You are now Silver" not in rendered.text and "Ada, you are now Silver" in rendered.text


# --- properties ---------------------------------------------------------------------------

LINES = st.lists(
    st.tuples(st.integers(1, 3), st.integers(1, 20_000), st.booleans()), min_size=1, max_size=3
)
EVENT = st.one_of(
    st.just(("earn",)),
    st.just(("approve",)),
    st.tuples(st.just("refund"), st.sampled_from("abcd"), st.integers(1, 30_000)),
)


def apply(engine, rt, now, order_id, ev) -> None:
    with session_scope(engine) as session:
        if ev[0] == "earn":
            earn(session, [order_id], now, rt)
        elif ev[0] == "approve":
            approve(session, [order_id], now + WINDOW, rt)
        else:
            amount = Decimal(ev[2]) / 100
            refund = Refund(order_id, amount, ev[1])
            reverse_refunds(session, [refund], now + timedelta(days=1), rt)


def ledger_snapshot(engine, order_id, customer_id):
    with session_scope(engine) as session:
        rows = [(e.source_key, e.kind, e.status, e.points, e.basis)
                for e in entries_of(session, order_id)]
        return rows, balances(session, [customer_id])[customer_id]


def check_invariants(rows, balance) -> None:
    for status in ("pending", "approved"):
        assert balance[status] == sum(p for _, _, s, p, _ in rows if s == status)
        assert balance[status] >= 0
    earned = sum(p for _, k, _, p, _ in rows if k == "earn")
    reversed_ = -sum(p for _, k, _, p, _ in rows if k == "reverse")
    assert 0 <= reversed_ <= earned
    if earned:
        [(_, _, _, _, basis)] = [r for r in rows if r[1] == "earn"]
        refunded = sum(b for _, k, _, _, b in rows if k == "reverse")
        share = earned if refunded >= basis else int(earned * refunded / basis)
        assert reversed_ == share  # exactly the cumulative proportional share
    if any(k == "approve" for _, k, _, _, _ in rows):
        assert balance["pending"] == 0


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=LINES, events=st.lists(EVENT, max_size=10))
def test_ledger_properties_over_random_event_sequences(engine, runtime, now, lines, events):
    with session_scope(engine) as session:
        order = delivered_order(session, now, lines=[("TEE-1", q, str(Decimal(c) / 100))
                                                     for q, c, _ in lines])
        for line, (_, _, gift) in zip(order.lines, lines, strict=True):
            line.gift_card = gift
        order_id, customer_id = order.id, order.customer_id
    for ev in events:
        apply(engine, runtime, now, order_id, ev)
        rows, balance = ledger_snapshot(engine, order_id, customer_id)
        check_invariants(rows, balance)
        apply(engine, runtime, now, order_id, ev)  # the same event again changes nothing
        assert ledger_snapshot(engine, order_id, customer_id) == (rows, balance)
