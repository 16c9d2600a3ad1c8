"""configs/pages.yaml: the customer pages the edge serves."""

from __future__ import annotations

from pydantic import Field

from tasks.config.base import Strict


class LinkLifetimes(Strict):
    """Days a mailed link keeps working, counted from the mail; 0: it never expires."""

    order: int = Field(default=400, ge=0)
    feedback: int = Field(default=90, ge=0)
    review: int = Field(default=365, ge=0)
    preferences: int = Field(default=0, ge=0)  # an unsubscribe link must always work
    loyalty: int = Field(default=400, ge=0)
    returns: int = Field(default=400, ge=0)


class ReviewRules(Strict):
    """Where review links go and what moderation may reject for (content rules, never rating)."""

    platform: str = "journeys"  # journeys (our /r/ page) or a key of platform_urls
    # A store on Judge.me/Yotpo/Okendo: a URL template per platform; {sku} {product} {order}
    platform_urls: dict[str, str] = Field(default_factory=dict)
    reject_reasons: list[str] = Field(default_factory=lambda: [
        "profanity", "personal_data", "off_topic", "spam"])


class PagesConfig(Strict):
    """configs/pages.yaml: the customer pages the edge serves (flows/pages)."""

    link_days: LinkLifetimes = LinkLifetimes()
    survey_change_minutes: int = Field(default=1440, ge=0)  # a later answer may replace one
    per_ip_limit: str = "120/minute"  # requests per client address (limits' notation)
    per_token_limit: str = "30/minute"  # requests per link
    related_products: int = Field(default=3, ge=0, le=12)  # "you might also like" on a page
    max_comment_chars: int = Field(default=2000, ge=100, le=20000)
    reviews: ReviewRules = ReviewRules()
    # Marketing topics a customer can turn off on /u/{token}: topic → the templates it covers.
    topics: dict[str, list[str]] = Field(default_factory=lambda: {
        "reviews": ["review_request"], "offers": ["cross_sell", "replenishment"],
        "care": ["care_guide"], "birthday": ["birthday"],
        "loyalty": ["loyalty_invite", "loyalty_update"]})
