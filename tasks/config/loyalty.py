"""configs/loyalty.yaml: earning rules, return window, tiers, enrolment, tier mails."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import Field, model_validator

from tasks.config.base import Strict


class Rate(Strict):
    points_per_unit: Decimal = Field(ge=0)
    unit: Decimal = Field(gt=0)


class EarningRule(Rate):
    version: str = Field(min_length=1, max_length=30)
    valid_from: date
    currencies: dict[str, Rate] = Field(default_factory=dict)

    def rate_for(self, currency: str) -> Rate:
        return self.currencies.get(currency.upper(), self)


class Tier(Strict):
    name: str = Field(min_length=1, max_length=30)
    min_spend: Decimal = Field(ge=0)


class Enrollment(Strict):
    auto_enroll_with_consent: bool = True
    invite: bool = True
    earn_before_enrollment: bool = True


class TierEmails(Strict):
    enabled: bool = True
    on_downgrade: bool = False


class LoyaltyConfig(Strict):
    rules: list[EarningRule] = Field(min_length=1)
    return_window_days: int = Field(default=30, ge=0)
    tier_window_days: int = Field(default=365, ge=1)
    tiers: list[Tier] = Field(min_length=1)
    enrollment: Enrollment = Enrollment()
    tier_emails: TierEmails = TierEmails()
    # What one point is worth when spent, in the store currency (store.yaml default_currency):
    # reports value the outstanding points with it. None: they are reported in points only.
    point_value: Decimal | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> LoyaltyConfig:
        """Unique rule versions and valid_from dates; tiers ascending, the first from 0."""
        if len({r.version for r in self.rules}) != len(self.rules):
            raise ValueError("rule versions must be unique")
        if len({r.valid_from for r in self.rules}) != len(self.rules):
            raise ValueError("two rules cannot start on the same day")
        spends = [t.min_spend for t in self.tiers]
        if spends != sorted(set(spends)) or spends[0] != 0:
            raise ValueError("tiers need strictly ascending min_spend, the first one 0")
        return self

    def rule_at(self, placed_at: datetime) -> EarningRule | None:
        """The latest rule whose valid_from is on or before the day (UTC) the order was placed."""
        day = placed_at.date()
        started = [r for r in self.rules if r.valid_from <= day]
        return max(started, key=lambda r: r.valid_from) if started else None

    def tier_for(self, spend: Decimal) -> str:
        return [t.name for t in self.tiers if t.min_spend <= spend][-1]

    def tier_rank(self, name: str | None) -> int:
        names = [t.name for t in self.tiers]
        return names.index(name) if name in names else -1
