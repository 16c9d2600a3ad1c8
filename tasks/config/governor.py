"""configs/governor.yaml: frequency caps, quiet hours, how long a held mail may wait."""

from __future__ import annotations

from datetime import time, timedelta

from pydantic import Field

from tasks.config.base import Strict


class Cap(Strict):
    count: int = Field(ge=1)
    hours: float = Field(gt=0)

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.hours)

    @property
    def label(self) -> str:
        return f"{self.count} per {self.hours:g}h"


class QuietHours(Strict):
    start: time = time(21, 0)
    end: time = time(8, 0)


class DeferExpiry(Strict):
    default: float = Field(default=72, gt=0)
    by_class: dict[str, float] = Field(default_factory=dict)
    by_template: dict[str, float] = Field(default_factory=dict)

    def hours_for(self, template: str, msg_class: str) -> float:
        """Template beats class beats the default."""
        return self.by_template.get(template, self.by_class.get(msg_class, self.default))


class GovernorConfig(Strict):
    caps: list[Cap] = Field(
        default_factory=lambda: [Cap(count=1, hours=16), Cap(count=3, hours=168)]
    )
    quiet_hours: QuietHours = QuietHours()
    defer_expiry_hours: DeferExpiry = DeferExpiry()
    block_transactional: list[str] = Field(default_factory=lambda: ["bounce", "erasure"])
