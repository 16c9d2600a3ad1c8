"""The GX quality gate: suites run once per batch, failures mapped back to their rows."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from tasks.intake.schema import OrderIn
from tasks.quality.frames import feedback_frame, outbox_frame, tracking_frame
from tasks.quality.gate import (
    GateError,
    GateFailed,
    as_rejected,
    gate_orders,
    order_frame,
    validate_frame,
)
from tasks.quality.suites import SuiteError, load_spec


def make_order(now, n: int, **fields) -> OrderIn:
    """A valid canonical order placed an hour before `now`; `fields` override."""
    record = {
        "external_id": f"CN-{n}", "email": f"buyer{n}@example.com",
        "placed_at": (now - timedelta(hours=1)).isoformat(), "currency": "USD",
        "financial_status": "paid", "shipping": {"price": "5.00"}, "tax": "2.00",
        "lines": [{"sku": "TEE-1", "title": "Tee", "quantity": 2, "unit_price": "10.00"}],
    } | fields
    return OrderIn.model_validate(record)


def batch(now, size: int) -> list[OrderIn]:
    return [make_order(now, n) for n in range(size)]


def reasons(result, position: int) -> set[tuple[str, str]]:
    return {(f["expectation"], f["column"]) for f in result.failures.get(position, [])}


# ---------------------------------------------------------------- orders


def test_a_clean_order_batch_passes(now):
    orders = batch(now, 5) + [make_order(now, 9, taxes_included=True, total="25.00")]
    passed, rejected, result = gate_orders(orders, now, max_failure_rate=0.2)
    assert result.success and result.failures == {} and rejected == []
    assert passed == orders
    assert result.stats == {"evaluated": 9, "successful": 9, "unsuccessful": 0,
                            "rows": 6, "failed_rows": 0, "held_rows": 0}


def test_the_order_frame_has_one_row_per_order_with_derived_columns(now):
    orders = [make_order(now, 1, total="30.00"),
              make_order(now, 2, taxes_included=True, total="25.00",
                         placed_at=(now + timedelta(minutes=10)).isoformat())]
    frame = order_frame(orders, now)
    assert list(frame["external_id"]) == ["CN-1", "CN-2"]
    assert list(frame["total_mismatch"]) == [3.0, 0.0]  # 30 vs 20 + 5 + 2; 25 vs 20 + 5
    assert list(frame["placed_in_future_seconds"]) == [-3600.0, 600.0]
    assert list(frame["min_quantity"]) == [2, 2] and list(frame["min_price"]) == [10.0, 10.0]


def test_bad_rows_are_returned_with_their_expectations_and_columns(now):
    orders = batch(now, 20)
    orders[3] = make_order(now, 3, email="not-an-email")
    orders[7] = make_order(now, 7, total="99.00")
    orders[11] = make_order(now, 11, placed_at=(now + timedelta(hours=2)).isoformat())
    orders[12] = make_order(now, 4)  # the same id as row 4
    # Pydantic already refuses these; the gate must catch them anyway (model_copy skips checks).
    orders[15] = orders[15].model_copy(update={"currency": "usd"})
    orders[16] = orders[16].model_copy(update={"currency": "XYZ"})
    line = orders[17].lines[0].model_copy(update={"quantity": 0, "unit_price": Decimal("-1")})
    orders[17] = orders[17].model_copy(update={"lines": [line]})

    passed, rejected, result = gate_orders(orders, now, max_failure_rate=0.5)

    assert not result.success
    assert sorted(result.failures) == [3, 4, 11, 12, 15, 16, 17]
    assert reasons(result, 3) == {("expect_column_values_to_match_regex", "email")}
    assert result.holds == {7: ["total_mismatch"]}  # stored and held by verification (issue 13)
    assert reasons(result, 11) == {
        ("expect_column_values_to_be_between", "placed_in_future_seconds")}
    assert reasons(result, 4) == reasons(result, 12) == {
        ("expect_column_values_to_be_unique", "external_id")}
    assert reasons(result, 15) == {("expect_column_values_to_match_regex", "currency"),
                                   ("expect_column_values_to_be_in_set", "currency")}
    assert reasons(result, 16) == {("expect_column_values_to_be_in_set", "currency")}
    assert reasons(result, 17) == {("expect_column_values_to_be_between", "min_quantity"),
                                   ("expect_column_values_to_be_between", "min_price")}
    assert result.failures[3][0]["reason"] == "e-mail format"
    assert result.stats["rows"] == 20 and result.stats["failed_rows"] == 7
    assert result.stats["held_rows"] == 1
    assert passed == [o for i, o in enumerate(orders) if i not in result.failures]
    assert [o.external_id for o, _ in rejected] == [
        "CN-3", "CN-4", "CN-11", "CN-4", "CN-15", "CN-16", "CN-17"]
    assert rejected[0][1] == [{"field": "email", "reason": "e-mail format",
                               "check": "expect_column_values_to_match_regex"}]


def test_a_rejected_order_becomes_a_quarantine_record(now):
    order = make_order(now, 1, email="nobody").located('{"raw": 1}', "orders.jsonl:7")
    others = [make_order(now, n) for n in range(2, 10)]
    _, rejected, _ = gate_orders([order, *others], now, max_failure_rate=0.5)
    record = as_rejected(*rejected[0])
    assert (record.kind, record.source, record.raw, record.origin, record.external_id) == (
        "order", "canonical", '{"raw": 1}', "orders.jsonl:7", "CN-1")
    assert record.reasons[0]["field"] == "email"


def test_a_batch_over_the_threshold_fails_the_gate(now):
    orders = [make_order(now, n, email="nobody") if n < 37 else make_order(now, n)
              for n in range(100)]
    with pytest.raises(GateFailed) as caught:
        gate_orders(orders, now, max_failure_rate=0.2)
    assert str(caught.value) == ("orders batch failed the quality gate: 37 of 100 rows (37.0%) "
                                 "failed, above the 20% threshold")
    assert caught.value.result.stats["failed_rows"] == 37
    passed, rejected, _ = gate_orders(orders, now, max_failure_rate=0.37)  # at the limit: passes
    assert len(passed) == 63 and len(rejected) == 37


def test_an_empty_batch_passes(now):
    passed, rejected, result = gate_orders([], now, max_failure_rate=0.0)
    assert (passed, rejected, result.stats["rows"]) == ([], [], 0)


def test_the_archived_result_is_compact_json(now):
    orders = batch(now, 50)
    orders[5] = make_order(now, 5, email="broken")
    result = validate_frame("orders", order_frame(orders, now))
    archived = json.loads(json.dumps(result.to_json()))
    assert archived["success"] is False and archived["stats"]["failed_rows"] == 1
    email = [e for e in archived["expectations"] if e["column"] == "email"][0]
    assert (email["success"], email["unexpected_count"], email["rows_sample"]) == (False, 1, [5])
    assert "currencies" not in json.dumps(archived)  # parameter values are not archived


# ---------------------------------------------------------------- other suites


def test_the_outbox_check_flags_suppressed_recipients_and_double_confirmations():
    messages = [
        {"id": 1, "order_id": 10, "template": "confirmation", "to_addr": "ok@example.com"},
        {"id": 2, "order_id": 11, "template": "confirmation", "to_addr": "Gone@Example.com"},
        {"id": 3, "order_id": 12, "template": "confirmation", "to_addr": "twice@example.com"},
        {"id": 4, "order_id": 12, "template": "confirmation", "to_addr": "twice@example.com"},
        {"id": 5, "order_id": 10, "template": "shipping", "to_addr": "ok@example.com"},
    ]
    frame = outbox_frame(messages, confirmed_order_ids=[10, 11, 12, 13])
    result = validate_frame("outbox", frame, {"suppressed": ["gone@example.com"]})
    assert not result.success
    assert sorted(result.failures) == [1, 2, 3, 5]  # row 5: order 13 has no confirmation
    assert reasons(result, 1) == {("expect_column_values_to_not_be_in_set", "to_addr")}
    assert result.failures[1][0]["reason"] == "recipient is suppressed"
    for position in (2, 3, 5):
        assert reasons(result, position) == {("expect_column_values_to_be_between",
                                              "confirmations")}
    assert frame.loc[5, "order_id"] == 13 and frame.loc[5, "confirmations"] == 0


def test_a_clean_outbox_passes_with_no_suppressions():
    messages = [{"id": 1, "order_id": 10, "template": "confirmation", "to_addr": "a@example.com"}]
    assert validate_frame("outbox", outbox_frame(messages, [10])).success


def test_tracking_events_are_checked(now):
    events = [
        {"event_id": "e1", "tracking_number": "1Z1", "tag": "InTransit",
         "checkpoint_time": "2026-11-18T09:00:00+01:00"},
        {"event_id": "e1", "tracking_number": "1Z2", "tag": "Delivered",
         "checkpoint_time": (now - timedelta(hours=1)).isoformat()},
        {"event_id": "e3", "tracking_number": None, "tag": "Lost",
         "checkpoint_time": (now + timedelta(days=1)).isoformat()},
        {"event_id": "e4", "tracking_number": "1Z4", "tag": "Pending", "checkpoint_time": None},
    ]
    result = validate_frame("tracking_events", tracking_frame(events, now))
    # a repeated event id is a duplicate for intake to ignore, not a quality failure
    assert sorted(result.failures) == [2]
    assert reasons(result, 2) == {
        ("expect_column_values_to_not_be_null", "tracking_number"),
        ("expect_column_values_to_be_in_set", "tag"),
        ("expect_column_values_to_be_between", "checkpoint_in_future_seconds")}


def test_feedback_tags_are_checked_one_by_one_and_map_back_to_their_row():
    items = [{"order_id": 1, "rating": 5, "tags": []},
             {"order_id": 2, "rating": 2, "tags": ["late", "damaged"]},
             {"order_id": 3, "rating": 0, "tags": ["late"]},
             {"order_id": None, "rating": 3, "tags": ["other", "smelly", "weird"]}]
    result = validate_frame("feedback", feedback_frame(items))
    assert sorted(result.failures) == [2, 3] and result.stats["rows"] == 4
    assert reasons(result, 2) == {("expect_column_values_to_be_between", "rating")}
    assert reasons(result, 3) == {("expect_column_values_to_not_be_null", "order_id"),
                                  ("expect_column_values_to_be_in_set", "tags")}
    assert len(result.failures[3]) == 2  # two unknown tags, reported once


# ---------------------------------------------------------------- errors and suites


def test_a_frame_missing_a_column_is_an_error_not_a_pass(now):
    frame = order_frame(batch(now, 3), now).drop(columns=["email"])
    with pytest.raises(GateError, match="email"):
        validate_frame("orders", frame)


def test_a_missing_parameter_is_an_error(tmp_path):
    spec = [{"expectation": "expect_column_values_to_be_in_set",
             "kwargs": {"column": "slug", "value_set": {"$PARAMETER": "carriers"}},
             "meta": {"reason": "unknown carrier"}}]
    (tmp_path / "tracking_events.json").write_text(json.dumps(spec))
    frame = pd.DataFrame({"slug": ["ups", "dhl"]})
    with pytest.raises(GateError, match="carriers"):
        validate_frame("tracking_events", frame, directory=tmp_path)
    result = validate_frame("tracking_events", frame, {"carriers": ["ups"]}, directory=tmp_path)
    assert sorted(result.failures) == [1]


def test_suites_are_declarative_files_with_reasons(tmp_path):
    for kind in ("orders", "tracking_events", "feedback", "outbox"):
        spec = load_spec(kind)
        assert spec and all(item["meta"]["reason"] for item in spec)
    (tmp_path / "orders.json").write_text('[{"expectation": "expect_x", "kwargs": {}}]')
    with pytest.raises(SuiteError, match="meta.reason"):
        load_spec("orders", tmp_path)


# ---------------------------------------------------------------- timing note


def synthetic_order_frame(rows: int, seed: int = 7) -> pd.DataFrame:
    """A flat order frame of `rows` rows, about 1 % of them bad."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "source": "canonical",
        "external_id": [f"CN-{i}" for i in range(rows)],
        "email": [f"buyer{i}@example.com" for i in range(rows)],
        "currency": rng.choice(["USD", "EUR", "GBP"], rows),
        "min_quantity": rng.integers(1, 5, rows),
        "min_price": rng.uniform(0, 500, rows).round(2),
        "total_mismatch": 0.0,
        "placed_in_future_seconds": -rng.uniform(0, 86_400, rows),
    })
    bad = rng.choice(rows, rows // 100, replace=False)
    frame.loc[bad, "email"] = "not-an-address"
    return frame


def test_timing_validate_frame_on_100k_orders(capsys):
    validate_frame("orders", synthetic_order_frame(10))  # GX import and context, once
    frame = synthetic_order_frame(100_000)
    started = time.perf_counter()
    result = validate_frame("orders", frame)
    elapsed = time.perf_counter() - started
    assert result.stats["rows"] == 100_000 and result.stats["failed_rows"] == 1_000
    with capsys.disabled():
        print(f"\nvalidate_frame('orders') on 100,000 rows: {elapsed:.2f} s")
