"""configs/aftercare.yaml: feedback, review requests, care guides, cross-sell, birthdays."""

from __future__ import annotations

from pydantic import Field

from tasks.config.base import Strict


class FeedbackRules(Strict):
    low_rating_threshold: int = Field(default=2, ge=1, le=5)
    # Issue tag → proposed resolution; the first tag listed here that a response carries wins.
    proposals: dict[str, str] = Field(default_factory=lambda: {
        "damaged": "replacement", "wrong_item": "replacement", "missing_item": "replacement",
        "late": "keep_with_credit", "other": "keep_with_credit",
    })
    low_rating_proposal: str = "refund"


class ReviewRules(Strict):
    per_customer_30_days: int = Field(default=5, ge=0)
    product_repeat_days: int = Field(default=365, ge=1)
    hold_retry_hours: int = Field(default=24, ge=1)


class CareGuide(Strict):
    title: str
    body: str
    url: str | None = None


class CrossSellRules(Strict):
    max_items: int = Field(default=3, ge=1)
    affinity: dict[str, list[str]] = Field(default_factory=dict)


class ReplenishmentRules(Strict):
    lead_days: int = Field(default=5, ge=0)


class BirthdayRules(Strict):
    min_capture_days: int = Field(default=30, ge=0)
    percent_off: int = Field(default=15, ge=1, le=100)
    valid_days: int = Field(default=30, ge=1)
    code_prefix: str = "BDAY"


class AftercareConfig(Strict):
    feedback: FeedbackRules = FeedbackRules()
    reviews: ReviewRules = ReviewRules()
    care_guides: dict[str, CareGuide] = Field(default_factory=dict)  # by category
    cross_sell: CrossSellRules = CrossSellRules()
    replenishment: ReplenishmentRules = ReplenishmentRules()
    birthday: BirthdayRules = BirthdayRules()
