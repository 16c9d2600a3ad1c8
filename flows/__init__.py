"""The Python API: every deployable flow and its parameter model, for engineers.

    from flows import order_journey, OrderJourneyRequest
    order_journey(OrderJourneyRequest(order_id="#1001"))

Imports are lazy so `journeys --help` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "sweep": "flows.journey", "daily": "flows.journey", "order_journey": "flows.journey",
    "ingest": "flows.intake",
    "reconcile_shopify": "flows.reconcile",
    "release_quarantine": "flows.operations", "erase_customer": "flows.operations",
    "find_order": "flows.find_order", "FindOrderRequest": "flows.parameters",
    "review_quarantine": "flows.operations", "QuarantineReviewRequest": "flows.parameters",
    "review_holds": "flows.decisions", "review_cases": "flows.decisions",
    "review_returns": "flows.decisions", "ReturnReviewRequest": "flows.parameters",
    "moderate_reviews": "flows.moderation", "ModerationRequest": "flows.moderation",
    "SweepRequest": "flows.parameters", "DailyRequest": "flows.parameters",
    "OrderJourneyRequest": "flows.parameters", "IngestRequest": "flows.parameters",
    "QuarantineReleaseRequest": "flows.parameters", "ErasureRequest": "flows.parameters",
    "HoldReviewRequest": "flows.parameters", "CaseReviewRequest": "flows.parameters",
    "ReconcileRequest": "flows.parameters",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
