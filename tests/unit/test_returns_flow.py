"""What happens to a return after it is opened (tasks/returns/decisions.py, receipt.py,
shopify.py), on SQLite and PostgreSQL: operator decisions, a label, receipt, the refund (exact
points reversal, one credit note) or the exchange (a linked replacement order), Shopify's
returns/* webhooks, and the report. Every call is run twice: the second changes nothing.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tasks import lifecycle, operations
from tasks.config.returns import AutoApprove
from tasks.deliveries import Body
from tasks.loyalty import earn
from tasks.loyalty.rules import reversal_points
from tasks.returns import decisions, shopify
from tasks.returns.policy import returnable_lines
from tasks.returns.report import returns_markdown, returns_report
from tasks.returns.requests import ReturnRequest, open_returns
from tasks.runtime import Runtime
from tasks.store.db import session_scope
from tasks.store.models import (
    CreditNote,
    LoyaltyEntry,
    Message,
    Order,
    OrderEvent,
    Product,
    Return,
)
from tasks.store.queries import order_returns
from tasks.store.returns import units_not_kept
from tests.factories import add_order

REAL = Path(__file__).parents[1] / "fixtures" / "real" / "shopify"
_rows = count(1)


@pytest.fixture
def rt(runtime) -> Runtime:
    """The shipped policy, but every request waits for an operator."""
    returns = runtime.config.returns.model_copy(update={"auto_approve": AutoApprove(
        enabled=False)})
    return Runtime(settings=runtime.settings,
                   config=runtime.config.model_copy(update={"returns": returns}))


def tee_order(session, now, rt, external_id: str | None = None) -> Order:
    """A delivered order of two tees (S) and a mug, that earned its points; tee M in stock."""
    if session.scalar(select(Product.id).where(Product.sku == "TEE-S")) is None:
        session.add_all([Product(sku=sku, title=f"Cotton tee - {size}", category="apparel",
                                 stock=10, reserved=0, attributes={"shopify_product_id": "77"},
                                 updated_at=now) for sku, size in (("TEE-S", "S"),
                                                                   ("TEE-M", "M"))])
    fields = {"external_id": external_id} if external_id else {}
    order = add_order(session, now, [("TEE-S", 2, "25.00"), ("MUG-1", 1, "18.00")],
                      state="delivered", step=None, placed_at=now - timedelta(days=5),
                      delivered_at=now - timedelta(days=2), **fields)
    earn(session, [order.id], now, rt)
    return order


def open_one(session, order: Order, rt, now, key: str, **request: Any) -> Return:
    tee = order.lines[0]
    wanted = ReturnRequest(order_id=order.id, source="operator", key=key,
                           **{"reason": "changed_mind", "lines": {tee.id: 2}, **request})
    [opened] = open_returns(session, [wanted], now, rt, actor="test")
    return opened.ret


def snapshot(session) -> dict[str, Any]:
    """Everything a rerun must leave as it is."""
    def rows(*columns):
        return sorted(tuple(map(str, r)) for r in session.execute(select(*columns)))

    return {"returns": rows(Return.id, Return.status, Return.refund_amount,
                            Return.credit_amount, Return.label_url, Return.label_ref,
                            Return.replacement_order_id, Return.decision_note),
            "events": session.scalar(select(func.count()).select_from(OrderEvent)),
            "mail": rows(Message.effect_key),
            "ledger": rows(LoyaltyEntry.source_key, LoyaltyEntry.points),
            "notes": rows(CreditNote.effect_key, CreditNote.number, CreditNote.total),
            "orders": session.scalar(select(func.count()).select_from(Order))}


def twice(engine, rt, call) -> Any:
    """Run `call(session)` twice in two transactions; the second must change nothing."""
    results, states = [], []
    for _ in range(2):
        with session_scope(engine) as session:
            results.append(call(session))
            states.append(snapshot(session))
    assert states[0] == states[1]
    return results


def return_mail(session, return_id: int) -> list[str]:
    keys = session.scalars(select(Message.effect_key).where(
        Message.effect_key.like(f"return:{return_id}:%")))
    return sorted(key.split(":")[2] for key in keys)


# ---------------------------------------------------------------- refund


def test_a_return_is_approved_labelled_received_and_refunded_once(engine, rt, now):
    with session_scope(engine) as session:
        order = tee_order(session, now, rt)
        ret = open_one(session, order, rt, now, "test:refund")
        order_id, ret_id, rma = order.id, ret.id, ret.rma
        assert ret.status == "requested"
        # A label only fits an approved return, and is never a made-up one.
        with pytest.raises(decisions.DecisionRefused, match="approved one"):
            decisions.attach_label(session, ret_id, now, rt, "ops", url="https://l.example/1")

    approved, again = twice(engine, rt, lambda s: operations.decide_returns(
        s, [ret_id], "approve", now, rt, "Grace", note="looks fine").outcome["returns"])
    assert (approved, again) == ([ret_id], [])
    with session_scope(engine) as session:
        for bad in ({"url": "http://l.example/x"}, {"url": "https://l.example/a b"},
                    {"pdf": b"<html>not a pdf"}, {}):
            with pytest.raises(decisions.DecisionRefused):
                decisions.attach_label(session, ret_id, now, rt, "ops", **bad)
    stored = twice(engine, rt, lambda s: decisions.attach_label(
        s, ret_id, now, rt, "ops", url="https://labels.example/R/1.pdf"))
    assert stored == [True, False]
    pdf = twice(engine, rt, lambda s: decisions.attach_label(
        s, ret_id, now, rt, "ops", pdf=b"%PDF-1.4 a real label"))
    assert pdf == [True, False]

    received = twice(engine, rt, lambda s: operations.receive_returns(
        s, [ret_id], now, rt, "warehouse").outcome)
    assert received[0] == {"received": 1, "refunded": 1, "exchanged": 0}
    assert received[1] == {"received": 0, "refunded": 0, "exchanged": 0}

    with session_scope(engine) as session:
        ret = session.get(Return, ret_id)
        # changed_mind: the customer pays the return label (6.95 USD), no restocking fee.
        assert (ret.status, ret.goods_value, ret.refund_amount) == (
            "refunded", Decimal("50.00"), Decimal("43.05"))
        assert ret.label_ref.startswith("file://") and rt.archive.get(ret.label_ref).startswith(
            b"%PDF-")
        ledger = dict(session.execute(select(LoyaltyEntry.source_key, LoyaltyEntry.points)
                                      .where(LoyaltyEntry.order_id == order_id)).tuples().all())
        earn_row = session.scalars(select(LoyaltyEntry).where(
            LoyaltyEntry.order_id == order_id, LoyaltyEntry.kind == "earn")).one()
        # Exactly the tees' share of what the order earned (their 50.00 of the goods).
        share = reversal_points(earn_row.points, earn_row.basis, Decimal(0), 0, Decimal(50))
        assert earn_row.points > share > 0
        assert ledger[f"order:{order_id}:reverse:return:{ret_id}:refund"] == -share
        [note] = session.scalars(select(CreditNote).where(CreditNote.order_id == order_id))
        assert (note.return_id, note.effect_key, note.total) == (
            ret_id, f"return:{ret_id}:refund", Decimal("43.05"))
        assert return_mail(session, ret_id) == ["approved", "label_ready", "label_ready",
                                                "refunded", "requested"]
        decided = [(e.actor, e.detail.get("decision")) for e in session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id, OrderEvent.kind == "return")
            .order_by(OrderEvent.id))]
        assert decided == [("test", None), ("Grace", "approved"), ("ops", "label"),
                           ("ops", "label"), ("warehouse", "received"),
                           ("journeys", "refunded")]
        [shown] = order_returns(session, [order_id])[order_id]
        assert (shown["rma"], shown["status"], shown["lines"][0]["sku"]) == (rma, "refunded",
                                                                              "TEE-S")
        figures = returns_report(session)
    assert figures["by_status"] == {"refunded": 1}
    assert figures["rate_by_product"] == {"TEE-S": "2 of 2 units (100.0%)"}
    assert figures["refunded"] == {"USD": "43.05 (1 returns)"}
    # escaped, not dropped: the UI shows "changed_mind" as written (issue 17)
    assert "| changed\\_mind | 2 of 3 units (66.7%) |" in returns_markdown(figures)


# ---------------------------------------------------------------- exchange, reject, credit


def test_an_exchange_makes_a_linked_replacement_and_reject_and_credit_tell_why(
        engine, rt, now):
    with session_scope(engine) as session:
        order = tee_order(session, now, rt)
        swap = open_one(session, order, rt, now, "test:swap", reason="too_small",
                        resolution="exchange", exchange={order.lines[0].id: "TEE-M"})
        other = add_order(session, now, [("TEE-S", 4, "25.00")], state="delivered", step=None,
                          delivered_at=now - timedelta(days=1))
        no = open_one(session, other, rt, now, "test:no")
        keep = open_one(session, other, rt, now, "test:keep", reason="quality")
        ids = swap.id, no.id, keep.id
        with pytest.raises(operations.OperationRefused, match="reason for the customer"):
            operations.decide_returns(session, [no.id], "reject", now, rt, "Grace", message=" ")

    twice(engine, rt, lambda s: decisions.approve_returns(s, [ids[0]], "Grace", "", now, rt))
    twice(engine, rt, lambda s: decisions.receive_returns(s, [ids[0]], now, rt, "warehouse"))
    rejected = twice(engine, rt, lambda s: decisions.reject_returns(
        s, [ids[1]], "Grace", "Worn items cannot be returned.", now, rt))
    credited = twice(engine, rt, lambda s: decisions.keep_with_credit(
        s, [ids[2]], "Grace", "", now, rt))
    assert (rejected, credited) == ([[ids[1]], []], [[ids[2]], []])

    with session_scope(engine) as session:
        swap, no, keep = (session.get(Return, i) for i in ids)
        replacement = session.get(Order, swap.replacement_order_id)
        assert (swap.status, replacement.replaces_order_id, replacement.total) == (
            "exchanged", order.id, Decimal(0))
        assert [(ln.sku, ln.quantity) for ln in replacement.lines] == [("TEE-M", 2)]
        assert session.scalar(select(func.count()).select_from(CreditNote)) == 0
        mail = {m.effect_key: m.context for m in session.scalars(select(Message).where(
            Message.template == "return_update"))}
        assert "/o/" in mail[f"return:{swap.id}:exchanged"]["replacement_url"]
        assert mail[f"return:{no.id}:rejected"]["message"] == "Worn items cannot be returned."
        # keep_with_credit_percent 20 of 50.00
        assert (no.status, keep.status, keep.credit_amount) == (
            "rejected", "kept_with_credit", Decimal("10.00"))


# ---------------------------------------------------------------- Shopify returns/*


def real(topic: str, **changes: Any) -> dict[str, Any]:
    folder = REAL / topic.replace("/", "__")
    return {**json.loads((folder / "shopify-webhook-reference-2026-07.json").read_text()),
            **changes}


def act(engine, rt, now, topic: str, *datas: dict[str, Any]) -> list[tuple[str, str]]:
    action = {"returns/request": shopify.on_return_requests,
              "returns/approve": shopify.on_return_approvals,
              "returns/decline": shopify.on_return_declines,
              "returns/close": shopify.on_return_closes}[topic]
    bodies = [Body(next(_rows), topic, data, now) for data in datas]
    with session_scope(engine) as session:
        return list(action(session, bodies, now, rt).values())


def line_items(line_id: int, quantity: int, reason: str) -> list[dict[str, Any]]:
    """Shopify's documented sample names no items: these are in Shopify's REST shape."""
    return [{"id": 987654321, "admin_graphql_api_id": "gid://shopify/ReturnLineItem/987654321",
             "fulfillment_line_item": {"id": 135792468, "line_item": {"id": line_id}},
             "quantity": quantity, "return_reason": reason, "customer_note": "Too tight\x00"}]


def test_shopify_returns_topics_open_approve_decline_and_close_returns(engine, rt, now):
    with session_scope(engine) as session:
        order = tee_order(session, now, rt, external_id="4783296544821")
        for position, line in enumerate(order.lines):
            line.external_id = str(466157049 + position)
        order_id = order.id
    request = real("returns/request", return_line_items=line_items(466157049, 2, "SIZE_TOO_SMALL"))
    other = {**request, "id": 555, "admin_graphql_api_id": "gid://shopify/Return/555",
             "return_line_items": line_items(466157050, 1, "DEFECTIVE")}

    assert act(engine, rt, now, "returns/request", real("returns/request"), {"id": "abc"},
               {**request, "id": 777, "order": {"id": 999}}) == [
        ("ignored", "return without return_line_items"),
        ("ignored", "id: expected a Shopify id (a positive integer), got 'abc'"),
        ("waiting", "waiting for order 999")]
    [(status, opened)] = act(engine, rt, now, "returns/request", request)
    assert status == "processed" and opened.endswith("opened (requested)")
    assert act(engine, rt, now, "returns/request", request)[0][1].endswith("already open")
    assert act(engine, rt, now, "returns/request", other)[0][0] == "processed"
    assert act(engine, rt, now, "returns/close", {"id": 888, "order_id": 1}) == [
        ("waiting", "waiting for return 888")]

    for _ in range(2):
        act(engine, rt, now, "returns/approve", real("returns/approve"))
        act(engine, rt, now, "returns/decline", real("returns/decline", id=555))
    [(_, closed)] = act(engine, rt, now, "returns/close", real("returns/close"))
    assert closed.endswith("refunded")
    assert act(engine, rt, now, "returns/close", real("returns/close"))[0][1] == closed
    # Closed at Shopify while still requested here: approved there, so refunded at once.
    act(engine, rt, now, "returns/request", {**other, "id": 556})
    assert act(engine, rt, now, "returns/close", real("returns/close", id=556))[0][1].endswith(
        "refunded")

    with session_scope(engine) as session:
        mine, declined = (session.scalars(select(Return).where(
            Return.external_id == ext)).one() for ext in ("123134564567890", "555"))
        assert (mine.source, mine.reason, mine.comment, mine.status) == (
            "shopify", "too_small", "Too tight", "refunded")
        assert (declined.status, declined.decision_note) == (
            "rejected", "As discussed on the phone, the 30-day return window has ended.")
        closed_early = session.scalars(select(Return).where(Return.external_id == "556")).one()
        assert return_mail(session, closed_early.id) == ["refunded", "requested"]
        reversed_before = session.scalar(select(func.sum(LoyaltyEntry.points)).where(
            LoyaltyEntry.order_id == order_id, LoyaltyEntry.kind == "reverse"))
        # Shopify's own refund of that return comes later: no second reversal or credit note.
        refund = {"id": 890088186047892319, "order_id": 4783296544821,
                  "return": {"id": 123134564567890}, "refund_line_items": [
                      {"line_item_id": 466157049, "quantity": 2, "subtotal": "50.00"}]}
        lifecycle.on_refunds(session, [Body(next(_rows), "refunds/create", refund, now)],
                             now, rt)
        assert session.scalar(select(func.sum(LoyaltyEntry.points)).where(
            LoyaltyEntry.order_id == order_id, LoyaltyEntry.kind == "reverse")) == reversed_before
        assert set(session.scalars(select(CreditNote.effect_key))) == {
            f"return:{mine.id}:refund", f"return:{closed_early.id}:refund"}


# ---------------------------------------------------------------- refunds both ways


def test_a_unit_refunded_by_a_page_return_and_again_at_shopify_counts_once(engine, rt, now):
    """journeys moves no money: after a page return is refunded here, the store refunds the
    payment at Shopify, whose refund names the same units without a return id. Each unit is
    reversed and credited once, whichever way came first; units beyond the return still are."""
    def reversed_points(session, order_id):
        return -session.scalar(select(func.coalesce(func.sum(LoyaltyEntry.points), 0)).where(
            LoyaltyEntry.order_id == order_id, LoyaltyEntry.kind == "reverse"))

    def shopify_refund(session, refund_id, external_id, units, subtotal):
        body = {"id": refund_id, "order_id": int(external_id), "refund_line_items": [
            {"line_item_id": 466157049, "quantity": units, "subtotal": subtotal}]}
        lifecycle.on_refunds(session, [Body(next(_rows), "refunds/create", body, now)], now, rt)

    with session_scope(engine) as session:
        first = tee_order(session, now, rt, external_id="4100000000001")   # return, then Shopify
        second = tee_order(session, now, rt, external_id="4100000000002")  # Shopify, then return
        for order in (first, second):
            order.lines[0].external_id = "466157049"
        for order, key in ((first, "both:1"), (second, "both:2")):
            ret = open_one(session, order, rt, now, key, lines={order.lines[0].id: 1})
            decisions.approve_returns(session, [ret.id], "ops", "", now, rt)
        first_ret, second_ret = (session.scalars(select(Return).where(
            Return.effect_key == key)).one() for key in ("both:1", "both:2"))
        decisions.receive_returns(session, [first_ret.id], now, rt, "warehouse")
        after_return = reversed_points(session, first.id)
        shopify_refund(session, 701, first.external_id, 1, "25.00")  # the same unit again
        assert reversed_points(session, first.id) == after_return == 25
        session.refresh(first)
        # ... and the returns page still offers the other tee (one unit left, counted once)
        assert still_returnable(session, first, now, rt) == 1
        shopify_refund(session, 702, first.external_id, 1, "25.00")  # the other tee: new
        assert reversed_points(session, first.id) == 50
        session.refresh(first)
        assert still_returnable(session, first, now, rt) == 0

        shopify_refund(session, 703, second.external_id, 1, "25.00")  # refunded before receipt
        decisions.receive_returns(session, [second_ret.id], now, rt, "warehouse")
        assert reversed_points(session, second.id) == 25
        assert session.get(Return, second_ret.id).status == "refunded"
        notes = dict(session.execute(select(CreditNote.effect_key, CreditNote.total)).all())
    assert set(notes) == {f"return:{first_ret.id}:refund", "shopify-refund:702",
                          "shopify-refund:703"}


def still_returnable(session, order, now, rt) -> int:
    """The tee units the returns page offers (the policy, as the page computes it)."""
    in_returns = units_not_kept(session, [order.id]).get(order.id, {})
    [tee] = [line for line in returnable_lines(order, {}, in_returns, now, rt.config)
             if line.line_id == order.lines[0].id]
    return tee.units
