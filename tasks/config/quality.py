"""configs/quality.yaml: when the quality gate fails a whole batch."""

from __future__ import annotations

from pydantic import Field

from tasks.config.base import Strict


class QualityConfig(Strict):
    max_failure_rate: float = Field(default=0.2, ge=0, le=1)
    min_rows_for_threshold: int = Field(default=20, ge=1)

    def failure_limit(self, rows: int) -> float:
        """The threshold for a batch of `rows` records (1.0: never fail the whole batch)."""
        return self.max_failure_rate if rows >= self.min_rows_for_threshold else 1.0
