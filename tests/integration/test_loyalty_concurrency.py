"""Concurrent loyalty accrual on SQLite and PostgreSQL: no lost update, no duplicate entry.

Many threads work on distinct orders of the SAME customer at once, one transaction per call:
every order is earned twice (by two threads), then approvals, two refunds per order and tier
refreshes race each other. The expected figures come from plain arithmetic on the orders, not
from the ledger code. A control runs a naive read-modify-write accrual (a scratch balance
column) through the same harness and threads, and must lose updates: proof that the harness
can see a lost update when there is one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import func, select, text

from tasks.loyalty import (
    Refund,
    approve,
    balances,
    earn,
    loyalty_config,
    reverse_refunds,
    update_tiers,
)
from tasks.store.db import session_scope
from tasks.store.models import Customer, LoyaltyEntry, Message, OrderEvent
from tests.factories import add_customer, add_order

THREADS = 8
PER_THREAD = 12
ORDERS = THREADS * PER_THREAD
QUANTITY = 2


def price_of(i: int) -> Decimal:
    return Decimal(20 + i % 7)


def refunds_of(i: int, basis: Decimal) -> tuple[Decimal, Decimal]:
    """Even orders: 10 + 15 refunded; odd orders: 60 % twice (together more than was paid)."""
    if i % 2 == 0:
        return Decimal("10.00"), Decimal("15.00")
    share = (basis * Decimal("0.6")).quantize(Decimal("0.01"))
    return share, share


def seed(engine, now) -> tuple[int, list[int]]:
    """One consenting customer with ORDERS delivered orders, `loyalty_earn` due now."""
    with session_scope(engine) as session:
        customer = add_customer(session, now, "regular@example.com", accepts_marketing=True)
        ids = [add_order(session, now, lines=[("TEE-1", QUANTITY, str(price_of(i)))],
                         state="delivered", step="loyalty_earn", customer=customer,
                         email=customer.email, placed_at=now - timedelta(days=5),
                         delivered_at=now).id
               for i in range(ORDERS)]
        return customer.id, ids


def race(work: Sequence[Sequence[Callable[[], object]]]) -> list[BaseException]:
    """Run each thread's calls in order, all threads released at once; the errors raised."""
    barrier, errors = threading.Barrier(len(work)), []

    def run(calls):
        barrier.wait()
        for call in calls:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 - collected and asserted empty
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(calls,)) for calls in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return errors


def in_transaction(engine, stage, *args) -> Callable[[], object]:
    def call():
        with session_scope(engine) as session:
            return stage(session, *args)
    return call


def slices(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[t * PER_THREAD:(t + 1) * PER_THREAD]) for t in range(THREADS)]


def earn_work(engine, ids, now, rt):
    """Thread t earns its own slice, then its neighbour's backwards: each order twice at once."""
    parts = slices(ids)
    return [[in_transaction(engine, earn, [oid], now, rt)
             for oid in parts[t] + parts[(t + 1) % THREADS][::-1]] for t in range(THREADS)]


def settle_work(engine, customer_id, ids, later, rt):
    """Per order, in three different threads: approve, refund r1, refund r2; tiers in between."""
    work: list[list[Callable[[], object]]] = [[] for _ in range(THREADS)]
    for i, oid in enumerate(ids):
        r1, r2 = refunds_of(i, QUANTITY * price_of(i))
        calls = [in_transaction(engine, approve, [oid], later, rt),
                 in_transaction(engine, reverse_refunds, [Refund(oid, r1, "r1")], later, rt),
                 in_transaction(engine, reverse_refunds, [Refund(oid, r2, "r2")], later, rt)]
        for k, call in enumerate(calls):
            work[(i + 3 * k) % THREADS].append(call)
        if i % PER_THREAD == 0:
            work[(i + 1) % THREADS].append(
                in_transaction(engine, update_tiers, [customer_id], later, rt))
    return work


def expected_figures() -> dict[str, int | Decimal]:
    """Earned, reversed and tier spend from the orders' numbers (1 point per 1.00 of goods)."""
    earned = reversed_ = 0
    spend = Decimal(0)
    for i in range(ORDERS):
        basis = QUANTITY * price_of(i)
        points = int(basis)
        refunded = sum(refunds_of(i, basis))
        share = min(points, int((points * refunded / basis).to_integral_value(ROUND_FLOOR)))
        earned, reversed_ = earned + points, reversed_ + share
        spend += basis - min(refunded, basis)
    return {"earned": earned, "reversed": reversed_, "spend": spend}


def ledger_duplicates(engine, ids) -> int:
    """Entries or timeline notes beyond one earn, two approve and two reverse rows per order."""
    want = {"earn": 1, "approve": 2, "reverse": 2}
    with session_scope(engine) as session:
        entries = Counter(session.execute(select(LoyaltyEntry.order_id, LoyaltyEntry.kind)))
        notes = Counter(session.execute(
            select(OrderEvent.order_id, OrderEvent.detail["entry"].as_string())
            .where(OrderEvent.kind == "loyalty")))
    extra = 0
    for oid in ids:
        for kind, n in want.items():
            assert entries[(oid, kind)] >= n, f"order {oid} misses {kind} entries"
            extra += entries[(oid, kind)] - n + max(notes[(oid, kind)] - n, 0)
    return extra


# --- the control: a naive read-modify-write balance ---------------------------------------


def naive_accrue(engine, customer_id: int, points: int, between: threading.Barrier) -> None:
    """Read the balance, add, write it back: what a stored balance column invites.

    Read and write are separate transactions, as in `balance = get(); ...; save(balance + n)`.
    (On SQLite each transaction takes the write lock at BEGIN, so a read and write inside one
    transaction could not interleave at all.) Every thread reads before any writes (the
    barrier): left to the scheduler, SQLite's threads sometimes ran one after another and the
    control saw nothing to lose.
    """
    with engine.begin() as conn:
        balance = conn.execute(text("SELECT points FROM naive_balance WHERE customer_id = :c"),
                               {"c": customer_id}).scalar_one()
    between.wait()
    with engine.begin() as conn:
        conn.execute(text("UPDATE naive_balance SET points = :p WHERE customer_id = :c"),
                     {"p": balance + points, "c": customer_id})


def naive_lost_updates(engine, customer_id, ids) -> int:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS naive_balance"))
        conn.execute(text("CREATE TABLE naive_balance (customer_id INTEGER PRIMARY KEY, "
                          "points INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO naive_balance VALUES (:c, 0)"), {"c": customer_id})
    points = {oid: int(QUANTITY * price_of(i)) for i, oid in enumerate(ids)}
    between = threading.Barrier(THREADS)
    work = [[lambda oid=oid: naive_accrue(engine, customer_id, points[oid], between)
             for oid in part] for part in slices(ids)]
    assert race(work) == []
    with engine.begin() as conn:
        final = conn.execute(text("SELECT points FROM naive_balance")).scalar_one()
        conn.execute(text("DROP TABLE naive_balance"))
    return sum(points.values()) - final


# --- the test -----------------------------------------------------------------------------


def test_concurrent_accrual_loses_no_update_and_duplicates_no_entry(engine, runtime, now,
                                                                    figure):
    customer_id, ids = seed(engine, now)
    want = expected_figures()

    assert race(earn_work(engine, ids, now, runtime)) == []
    with session_scope(engine) as session:
        after_earn = balances(session, [customer_id])[customer_id]
    later = now + timedelta(days=31)  # every return window has closed
    assert race(settle_work(engine, customer_id, ids, later, runtime)) == []

    with session_scope(engine) as session:
        final = balances(session, [customer_id])[customer_id]
        enrolled = session.get(Customer, customer_id).loyalty_enrolled_at
    duplicated = ledger_duplicates(engine, ids)
    with session_scope(engine) as session:
        update_tiers(session, [customer_id], later, runtime)  # settle on the final spend
    with session_scope(engine) as session:
        tier = session.get(Customer, customer_id).loyalty_tier
        tier_mails = Counter(session.scalars(select(Message.effect_key).where(
            Message.customer_id == customer_id, Message.template == "loyalty_update")))
        invites = session.scalar(select(func.count()).where(Message.template == "loyalty_invite"))
    expected_total = want["earned"] - want["reversed"]
    lost = expected_total - (final["pending"] + final["approved"])

    assert after_earn == {"pending": want["earned"], "approved": 0}
    assert final == {"pending": 0, "approved": expected_total}
    assert (lost, duplicated) == (0, 0)
    assert enrolled == now and invites == 0  # enrolled once, by the first delivered order
    assert tier == loyalty_config(runtime.config).tier_for(want["spend"])
    assert max(tier_mails.values(), default=1) == 1

    naive_lost = naive_lost_updates(engine, customer_id, ids)
    assert naive_lost > 0, "the harness did not produce a single lost update"
    figure(f"loyalty concurrency ({engine.dialect.name}): {THREADS} threads × {PER_THREAD} orders "
           f"of one customer, each earned twice, then approve + 2 refunds per order racing: "
           f"balance {final['approved']} = {want['earned']} earned − {want['reversed']} reversed, "
           f"lost {lost}, duplicated {duplicated}; naive read-modify-write control lost "
           f"{naive_lost} of {want['earned']} points")
