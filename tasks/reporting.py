"""The store-wide report: the store's counts (tasks/store/queries.py) and the domain's figures.

Composed here, above the store, so the store layer never imports the domain modules.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from tasks.aftercare.reviews import review_rates_by_rating, review_request_counts
from tasks.aftercare.winback import winback_counts
from tasks.config import Config, load_config
from tasks.loyalty import liability
from tasks.manifest import latest_manifests
from tasks.messaging.money import format_money
from tasks.returns.report import returns_report
from tasks.settings import get_settings
from tasks.store.queries import hold_reasons, store_counts
from tasks.storefront.reviews import approved_by_rating
from tasks.storefront.survey import fit_answers, survey_page_counts
from tasks.tracking.unshipped import past_ship_date
from tasks.verify import reason_codes


def report(session: Session, config: Config | None = None) -> dict[str, Any]:
    """Orders by state, holds by reason, messages by status, quarantine by reason, and more.

    `config` prices the points liability; without it, the config the settings name."""
    store = store_counts(session)
    return {
        "orders_by_state": store["orders_by_state"],
        "holds_by_reason": holds_by_reason(session),
        "messages_by_status": store["messages_by_status"],
        "quarantine_by_reason": store["quarantine_by_reason"],
        "points_liability": points_liability(session, config or load_config(
            get_settings().config_dir)),
        "review_requests_by_rating": {
            str(rating): rates for rating, rates in review_rates_by_rating(session).items()
        },
        # review requests: sent (with consent / as a follow-up), waiting, not sent by reason
        "review_requests": review_request_counts(session),
        "approved_reviews_by_rating": approved_by_rating(session),  # stars -> approved reviews
        "survey_page": survey_page_counts(session),  # page answers, opens, prefetches
        "fit_survey": fit_answers(session),  # apparel fit answers by choice
        "winback": winback_counts(session),  # win-back mail: sent, pending, skipped by reason
        "latest_runs": latest_manifests(session),
        "privacy_requests": store["privacy_requests"],
        # confirmed orders flagged past their ship date, no parcel yet (apology and case sent)
        "not_shipped": {"past_ship_date": past_ship_date(session)},
        "returns": returns_report(session),  # by status, rate by reason/product, refunds
    }


def holds_by_reason(session: Session) -> dict[str, int]:
    holds: Counter[str] = Counter()
    for reason in hold_reasons(session):
        holds.update(reason_codes(reason))
    return dict(holds.most_common())


def points_liability(session: Session, config: Config) -> dict[str, Any]:
    """Outstanding points by status and, at configs/loyalty.yaml `point_value`, what they are
    worth in the store currency: {"pending": 120, "approved": 50, "pending_value": "$1.20", ...}."""
    points: dict[str, Any] = dict(liability(session))
    value = config.loyalty.point_value
    if value is None:
        return points
    store = config.store
    return points | {f"{status}_value": format_money(Decimal(count) * value, store.default_currency,
                                                      store.default_locale)
                     for status, count in points.items()}
