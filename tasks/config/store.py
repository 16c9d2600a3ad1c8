"""configs/store.yaml: who the store is, as mails, documents and pages show it."""

from __future__ import annotations

from pydantic import Field

from tasks.config.base import Strict


class BrandColors(Strict):
    """The customer pages' colours (text on them must keep WCAG AA contrast: 4.5:1)."""

    primary: str = Field(default="#1f4d3a", pattern=r"^#[0-9a-fA-F]{6}$")  # buttons, links
    accent: str = Field(default="#8a3b12", pattern=r"^#[0-9a-fA-F]{6}$")  # highlights
    background: str = Field(default="#f6f4ef", pattern=r"^#[0-9a-fA-F]{6}$")


class StoreConfig(Strict):
    name: str
    legal_name: str
    email: str
    reply_to: str | None = None
    phone: str | None = None
    website: str
    logo_url: str | None = None
    postal_address: str
    tax_id: str | None = None
    default_locale: str = "en_US"
    default_currency: str = "USD"
    timezone: str = "UTC"
    return_policy: str
    links_base_url: str  # JOURNEYS_LINKS_BASE_URL overrides it (a test or staging edge)
    colors: BrandColors = BrandColors()
    unsubscribe_email: str | None = None  # the mailto: in List-Unsubscribe, beside the URL
    # Credit notes' number prefix; "{year}" is the issuing year (store time). The number series
    # (document_counters) is per formatted prefix: CN-2026-000001, CN-2026-000002, ...
    credit_note_prefix: str = Field(
        default="CN-{year}-", max_length=24,
        pattern=r"^[A-Za-z0-9_./-]*(\{year\}[A-Za-z0-9_./-]*)?$",
    )
