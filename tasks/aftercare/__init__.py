"""Aftercare: delivery feedback, service recovery, review requests and value-add follow-ups.

Every stage here consumes a step the tracking module schedules at delivery (feedback_request,
review_request, care_guide, cross_sell, replenishment) and writes outbox rows; consent,
suppression, frequency caps and quiet hours are the governor's job at send time.
Customer-level, from the daily run: birthday offers (followups.py) and win-back (winback.py);
the replenishment reminder's optional subscription offer and its click: subscription.py.
This package holds what only its stages share: the config accessor and closing the step of
orders no longer delivered. Mail context and the outbox row are tasks/messaging/compose.py's,
batch loaders tasks/store/loaders.py's, step updates tasks/store/journal.py's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.config import Config
from tasks.config.aftercare import AftercareConfig
from tasks.store.journal import CANCELLED, CLOSED, finish_steps
from tasks.store.models import Order

ISSUE_TAGS = ("damaged", "wrong_item", "missing_item", "late", "other")
DECISIONS = ("replacement", "refund", "keep_with_credit")


def aftercare_config(cfg: Config) -> AftercareConfig:
    """configs/aftercare.yaml, validated once per process."""
    return cfg.aftercare


def close_missing(
    session: Session, step: str, order_ids: Sequence[int], found: Iterable[int], now: datetime
) -> int:
    """Close the step of ids that are not delivered, cancelled or gone (not those a peer locked)."""
    missing = set(order_ids) - set(found)
    if missing:  # delivered but skipped: locked by another worker, so leave the step pending
        missing -= set(session.scalars(select(Order.id).where(
            Order.id.in_(missing), Order.delivered_at.is_not(None), Order.state != CANCELLED)))
    finish_steps(session, step, {oid: "not delivered" for oid in missing}, now, status=CLOSED)
    return len(missing)
