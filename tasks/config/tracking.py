"""configs/tracking.yaml: delays after delivery, exception kinds, late cases."""

from __future__ import annotations

from pydantic import Field, field_validator

from tasks.config.base import Strict

DEFAULT_AFTER_DELIVERY = {"feedback_request": 48.0, "review_request": 168.0, "care_guide": 72.0,
                          "cross_sell": 336.0, "replenishment": 0.0, "loyalty_earn": 0.0}


class TrackingConfig(Strict):
    """configs/tracking.yaml."""

    after_delivery: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_AFTER_DELIVERY))
    exception_kinds: dict[str, str] = Field(default_factory=dict)
    default_exception_kind: str = "delivery_problem"
    delay_extra_days: int = Field(default=3, ge=1)
    late_case_after_days: int = Field(default=5, ge=0)
    late_case_proposal: str = "refund"

    @field_validator("after_delivery")
    @classmethod
    def _with_defaults(cls, hours: dict[str, float]) -> dict[str, float]:
        """A step left out of the file keeps its default delay."""
        return DEFAULT_AFTER_DELIVERY | hours
