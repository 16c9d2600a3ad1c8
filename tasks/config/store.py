"""configs/store.yaml: who the store is, as mails, documents and pages show it."""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator

from tasks.config.base import ConfigError, Strict

# The images a document may embed as its logo, by file extension (and data: URI media type).
LOGO_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
              ".gif": "image/gif", ".webp": "image/webp", ".svg": "image/svg+xml"}
LOGO_DATA_URI = re.compile(r"^data:(image/(?:png|jpeg|gif|webp|svg\+xml));base64,[A-Za-z0-9+/=]+$")
LOGO_MAX_BYTES = 512 * 1024  # embedded in every document: keep it small
SERIES_PREFIX = r"^[A-Za-z0-9_./-]*(\{year\}[A-Za-z0-9_./-]*)?$"


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
    logo_url: str | None = None  # the customer pages' logo: a URL the browser loads
    # The documents' logo, embedded in each (never fetched): a file under the config folder
    # (e.g. assets/logo.svg) or a data: URI. None: the store's name instead.
    logo: str | None = None
    postal_address: str
    tax_id: str | None = None  # e.g. a US EIN, printed as "Tax ID"
    vat_id: str | None = None  # the seller's VAT number (EU, UK), printed on invoices
    # Order note attributes that carry the buyer's VAT number (names compared lower-case, with
    # "-" and " " as "_"): checkout apps collect it there, Shopify has no field of its own.
    buyer_vat_attributes: list[str] = Field(default_factory=lambda: [
        "vat_number", "vat_id", "vat", "vat_no", "vat_reg_no", "tax_id", "company_vat_number"])
    default_locale: str = "en_US"
    default_currency: str = "USD"
    timezone: str = "UTC"
    return_policy: str
    links_base_url: str  # JOURNEYS_LINKS_BASE_URL overrides it (a test or staging edge)
    colors: BrandColors = BrandColors()
    unsubscribe_email: str | None = None  # the mailto: in List-Unsubscribe, beside the URL
    # Number prefixes; "{year}" is the issuing year (store time). Each formatted prefix is its
    # own gapless series (document_counters): INV-2026-000001, INV-2026-000002, ...
    invoice_prefix: str = Field(default="INV-{year}-", max_length=24, pattern=SERIES_PREFIX)
    credit_note_prefix: str = Field(default="CN-{year}-", max_length=24, pattern=SERIES_PREFIX)

    @field_validator("logo")
    @classmethod
    def _logo_is_an_image(cls, logo: str | None) -> str | None:
        if logo is None or LOGO_DATA_URI.match(logo):
            return logo
        if logo.startswith("data:") or "://" in logo:
            raise ValueError("logo must be a file under the config folder or a base64 data: URI "
                             "of a PNG, JPEG, GIF, WebP or SVG image (never a URL to fetch)")
        path = Path(logo)
        if path.is_absolute() or ".." in path.parts or path.suffix.lower() not in LOGO_TYPES:
            raise ValueError(f"logo {logo!r}: a relative path inside the config folder ending "
                             f"in one of {', '.join(sorted(LOGO_TYPES))}")
        return logo



def logo_data_uri(logo: str | None, config_dir: Path) -> str | None:
    """The configured logo (`StoreConfig.logo`) as a data: URI for the documents; None when
    none is configured. A file is read once per process, like the templates."""
    if logo is None or logo.startswith("data:"):
        return logo
    return _file_data_uri(logo, Path(config_dir))


@lru_cache(maxsize=8)
def _file_data_uri(logo: str, config_dir: Path) -> str:
    path = config_dir / logo
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{config_dir / 'store.yaml'}: logo: cannot read {path}: "
                          f"{exc.strerror or exc}") from exc
    if len(data) > LOGO_MAX_BYTES:
        raise ConfigError(f"{config_dir / 'store.yaml'}: logo: {path} is {len(data)} bytes; "
                          f"at most {LOGO_MAX_BYTES} (it is embedded in every document)")
    media_type = LOGO_TYPES[path.suffix.lower()]
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
