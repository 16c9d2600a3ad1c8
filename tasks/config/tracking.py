"""configs/tracking.yaml: delays after delivery, exception kinds, late cases."""

from __future__ import annotations

from pydantic import Field, field_validator

from tasks.config.base import Strict
from tasks.journey import delivery_delays

# The delays when the file leaves a step out: the registry's (tasks/journey.py), one source.
DEFAULT_AFTER_DELIVERY = delivery_delays()


class TrackingConfig(Strict):
    """configs/tracking.yaml."""

    after_delivery: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_AFTER_DELIVERY))
    exception_kinds: dict[str, str] = Field(default_factory=dict)
    default_exception_kind: str = "delivery_problem"
    delay_extra_days: int = Field(default=3, ge=1)
    late_case_after_days: int = Field(default=5, ge=0)
    late_case_proposal: str = "refund"
    # A confirmed order without a parcel this many hours after its ship-by day ended is
    # flagged (tasks/tracking/unshipped.py): apology, service case, operator alert.
    ship_overdue_grace_hours: float = Field(default=24, ge=0)

    @field_validator("after_delivery")
    @classmethod
    def _with_defaults(cls, hours: dict[str, float]) -> dict[str, float]:
        """A step left out of the file keeps its default delay; a name no step has is a typo."""
        unknown = sorted(set(hours) - set(DEFAULT_AFTER_DELIVERY))
        if unknown:
            raise ValueError(f"{unknown} are not steps scheduled on delivery; known: "
                             f"{sorted(DEFAULT_AFTER_DELIVERY)}")
        return DEFAULT_AFTER_DELIVERY | hours
