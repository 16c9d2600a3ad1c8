"""configs/aftercare.yaml: feedback, review requests, care guides, cross-sell, birthdays,
win-back."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from babel import Locale
from pydantic import Field, field_validator

from tasks.config.base import Strict


class FeedbackRules(Strict):
    low_rating_threshold: int = Field(default=2, ge=1, le=5)
    # Issue tag → proposed resolution; the first tag listed here that a response carries wins.
    proposals: dict[str, str] = Field(default_factory=lambda: {
        "damaged": "replacement", "wrong_item": "replacement", "missing_item": "replacement",
        "late": "keep_with_credit", "other": "keep_with_credit",
    })
    low_rating_proposal: str = "refund"


# The EU's member states (ISO 3166-1 alpha-2; Greece is GR, not the EU's own "EL").
EU_MEMBER_STATES = frozenset({
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
    "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
})
# Region names a config may use besides country codes: "UK" is GB's common name.
REGION_GROUPS = {"EU": EU_MEMBER_STATES, "UK": frozenset({"GB"})}
# Several EU courts treat a review request as advertising: there, consent unless listed.
CONSENT_REGIONS = ("EU", "UK")
# required: only customers with marketing consent are asked (the request is marketing);
# transactional: customers without it are asked too, as a follow-up to their purchase.
ConsentBasis = Literal["required", "transactional"]
_COUNTRIES = frozenset(code for code in Locale("en").territories
                       if len(code) == 2 and code.isalpha() and code != "ZZ")


class ReviewConsent(Strict):
    """Whether asking for a review needs marketing consent, by the order's ship-to country.

    The most specific entry wins: a country code, then its group (EU, UK), then consent in
    the EU and UK unless listed, then `default`. Suppressed (unsubscribed, bounced, erased)
    addresses and those that turned the reviews topic off are never asked either way.
    """

    default: ConsentBasis = "required"
    regions: dict[str, ConsentBasis] = Field(default_factory=dict)

    @field_validator("regions", mode="before")
    @classmethod
    def _known_regions(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        regions = {str(name).strip().upper(): basis for name, basis in value.items()}
        unknown = sorted(set(regions) - set(REGION_GROUPS) - _COUNTRIES)
        if unknown:
            raise ValueError(f"unknown region {', '.join(unknown)}: use ISO 3166-1 country "
                             f"codes (US, DE) or {', '.join(REGION_GROUPS)}")
        if "UK" in regions and "GB" in regions:
            raise ValueError("UK and GB name the same country: keep one")
        return regions

    def rule_for(self, country: str | None) -> tuple[ConsentBasis, str]:
        """(basis, the region that decided it: a country code, EU, UK or "default")."""
        code = (country or "").strip().upper()
        code = "GB" if code == "UK" else code
        if code in self.regions:
            return self.regions[code], code
        groups = [name for name, members in REGION_GROUPS.items() if code in members]
        for group in groups:
            if group in self.regions:
                return self.regions[group], group
        for group in groups:
            if group in CONSENT_REGIONS:
                return "required", group
        return self.default, "default"


class ReviewRules(Strict):
    per_customer_30_days: int = Field(default=5, ge=0)
    product_repeat_days: int = Field(default=365, ge=1)
    hold_retry_hours: int = Field(default=24, ge=1)
    consent: ReviewConsent = ReviewConsent()


class CareGuide(Strict):
    title: str
    body: str
    url: str | None = None


class CrossSellRules(Strict):
    max_items: int = Field(default=3, ge=1)
    affinity: dict[str, list[str]] = Field(default_factory=dict)


class ReplenishmentRules(Strict):
    lead_days: int = Field(default=5, ge=0)
    # "Deliver every N weeks": the store's subscription product, {sku} and {weeks} filled in;
    # unset, the reminder offers no subscription. journeys records the click, bills nothing.
    subscription_url: str | None = None
    subscription_weeks: int | None = Field(default=None, ge=1)  # None: from consumable_days

    @field_validator("subscription_url")
    @classmethod
    def _url_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("https://") or "{sku}" not in value:
            raise ValueError("subscription_url must be an https:// URL template with {sku}")
        try:
            value.format(sku="x", weeks=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"subscription_url: only {{sku}} and {{weeks}} ({exc})") from exc
        return value


class BirthdayRules(Strict):
    min_capture_days: int = Field(default=30, ge=0)
    percent_off: int = Field(default=15, ge=1, le=100)
    valid_days: int = Field(default=30, ge=1)
    code_prefix: str = "BDAY"


class WinbackRules(Strict):
    """One mail to a customer who went quiet (tasks/aftercare/winback.py)."""

    enabled: bool = True
    after_days: int = Field(default=120, ge=1)  # since the last order, unless its category says
    # Category → days (the product's natural repurchase cycle, case-insensitive); the shortest
    # among the last order's categories wins.
    by_category: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    every_days: int = Field(default=180, ge=1)  # at most one win-back per customer this often
    new_products: int = Field(default=3, ge=0, le=12)  # "what's new" in their categories
    percent_off: int | None = Field(default=None, ge=1, le=100)  # None: no code
    valid_days: int = Field(default=30, ge=1)
    code_prefix: str = Field(default="BACK", pattern=r"^[A-Z0-9]{1,12}$")

    def days_for(self, categories: Iterable[str | None]) -> int:
        by_lower = {name.lower(): days for name, days in self.by_category.items()}
        found = [by_lower[c.lower()] for c in categories if c and c.lower() in by_lower]
        return min(found, default=self.after_days)

    @property
    def shortest_days(self) -> int:
        return min([self.after_days, *self.by_category.values()])


class AftercareConfig(Strict):
    feedback: FeedbackRules = FeedbackRules()
    reviews: ReviewRules = ReviewRules()
    care_guides: dict[str, CareGuide] = Field(default_factory=dict)  # by category
    cross_sell: CrossSellRules = CrossSellRules()
    replenishment: ReplenishmentRules = ReplenishmentRules()
    birthday: BirthdayRules = BirthdayRules()
    winback: WinbackRules = WinbackRules()
