"""The ledger output suite over synthetic entries (the ledger itself arrives with issue 3)."""

from __future__ import annotations

from tasks.quality.frames import ledger_frame
from tasks.quality.gate import validate_frame


def entry(key, customer, order, kind, status, points):
    return {"source_key": key, "customer_id": customer, "order_id": order, "kind": kind,
            "status": status, "points": points}


def test_a_sound_ledger_passes():
    entries = [entry("o1:earn", 1, 1, "earn", "approved", 100),
               entry("o1:refund:1", 1, 1, "reverse", "approved", -40),
               entry("o2:earn", 2, 2, "earn", "pending", 50)]
    assert validate_frame("ledger", ledger_frame(entries)).success


def test_over_reversal_negative_balance_and_double_award_fail():
    entries = [entry("o1:earn", 1, 1, "earn", "approved", 100),
               entry("o1:refund:1", 1, 1, "reverse", "approved", -80),
               entry("o1:refund:2", 1, 1, "reverse", "approved", -80),
               entry("o2:earn", 2, 2, "earn", "approved", 10),
               entry("o2:earn", 2, 2, "earn", "approved", 10)]
    result = validate_frame("ledger", ledger_frame(entries))
    reasons = {f["reason"] for failures in result.failures.values() for f in failures}
    assert not result.success
    assert reasons == {"no customer has a negative approved balance",
                       "reversals of an order never exceed what it earned",
                       "a source event awards or reverses points once"}
