"""Declarative business config (configs/*.yaml), validated into typed models once per process."""

from __future__ import annotations

import os
from datetime import date, time
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(Exception):
    """A config file is missing or invalid; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _amounts_by_currency(amounts: dict[str, Decimal]) -> dict[str, Decimal]:
    """Money limits are per ISO 4217 currency: a bare number would be judged in any currency."""
    for code, amount in amounts.items():
        if len(code) != 3 or not code.isascii() or not code.isupper() or not code.isalpha():
            raise ValueError(f"{code!r} is not an ISO 4217 currency code (e.g. USD)")
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"{code}: {amount} is not an amount")
    return amounts


# Per currency, in that currency's major unit (JPY 45000, not 450.00); see configs/packing.yaml.
Amounts = Annotated[dict[str, Decimal], AfterValidator(_amounts_by_currency)]


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


class PaymentRules(Strict):
    proceed: list[str]
    cancel: list[str]


class StockRules(Strict):
    reserve: bool = True


class EmailRules(Strict):
    pattern: str
    required: bool = False  # true: an order without an address is held (email_missing)


class CountryAddressRules(Strict):
    required: list[str] = Field(default_factory=list)
    zip_pattern: str | None = None


class AddressRules(Strict):
    required: list[str]
    countries: dict[str, CountryAddressRules] = Field(default_factory=dict)
    ship_to: list[str]


class RiskRules(Strict):
    max_order_value: Amounts = Field(default_factory=dict)
    max_line_quantity: int = 25
    hold_tags: list[str] = Field(default_factory=list)
    risk_attribute: str = "risk_score"
    max_risk_score: float = 0.7


class VerificationConfig(Strict):
    payment: PaymentRules
    stock: StockRules = StockRules()
    email: EmailRules
    address: AddressRules
    risk: RiskRules = RiskRules()


class PackingCondition(Strict):
    """A rule matches a line when ANY listed condition holds."""

    tags_any: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    min_grams: int | None = None
    min_unit_price: Amounts | None = None


class CarrierConstraints(Strict):
    max_transit_days: int | None = None
    ship_weekdays: list[int] | None = None  # 0 = Monday
    no_air: bool = False
    signature: bool = False
    methods: list[str] | None = None


class PackingRule(Strict):
    name: str
    when: PackingCondition
    materials: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    handling: list[str] = Field(default_factory=list)
    carrier: CarrierConstraints = CarrierConstraints()


class InsuranceRules(Strict):
    order_value_threshold: Amounts
    categories: list[str] = Field(default_factory=list)


class HandwrittenNoteRules(Strict):
    first_order: bool = True
    vip_tags: list[str] = Field(default_factory=list)
    gift_message: bool = True


class PromoRules(Strict):
    enabled: bool = True
    prefix: str = "THANKS"
    percent_off: int = 10
    valid_days: int = 60


class InsertRules(Strict):
    handwritten_note: HandwrittenNoteRules = HandwrittenNoteRules()
    promo: PromoRules = PromoRules()
    samples: dict[str, str] = Field(default_factory=dict)


class PackingConfig(Strict):
    rules: list[PackingRule]
    insurance: InsuranceRules
    inserts: InsertRules = InsertRules()

    @model_validator(mode="after")
    def _same_currencies(self) -> PackingConfig:
        """Every money rule names the same currencies: none is judged by only some of them."""
        expected = set(self.insurance.order_value_threshold)
        for rule in self.rules:
            prices = rule.when.min_unit_price
            if prices is not None and set(prices) != expected:
                raise ValueError(f"rule {rule.name}: min_unit_price currencies "
                                 f"{sorted(prices)} differ from insurance.order_value_threshold "
                                 f"{sorted(expected)}")
        return self

    @property
    def currencies(self) -> frozenset[str]:
        return frozenset(self.insurance.order_value_threshold)


class ShippingMethod(Strict):
    title: str
    transit_days: dict[str, int]

    def transit_to(self, country: str | None) -> int:
        return self.transit_days.get(country or "", self.transit_days["default"])


class ShippingConfig(Strict):
    origin_country: str
    timezone: str
    dispatch_cutoff: time
    processing_days: int = 1
    methods: dict[str, ShippingMethod]
    default_method: str
    aliases: dict[str, str] = Field(default_factory=dict)
    holidays: list[date] = Field(default_factory=list)


class TemplateSpec(Strict):
    msg_class: str = Field(alias="class", pattern="^(transactional|marketing)$")
    version: int
    priority: int = 50
    subject: str


class MessagingConfig(Strict):
    from_name: str
    from_address: str
    templates: dict[str, TemplateSpec]


class QualityConfig(Strict):
    max_failure_rate: float = Field(default=0.2, ge=0, le=1)
    min_rows_for_threshold: int = Field(default=20, ge=1)

    def failure_limit(self, rows: int) -> float:
        """The threshold for a batch of `rows` records (1.0: never fail the whole batch)."""
        return self.max_failure_rate if rows >= self.min_rows_for_threshold else 1.0


class LinkLifetimes(Strict):
    """Days a mailed link keeps working, counted from the mail; 0: it never expires."""

    order: int = Field(default=400, ge=0)
    feedback: int = Field(default=90, ge=0)
    review: int = Field(default=365, ge=0)
    preferences: int = Field(default=0, ge=0)  # an unsubscribe link must always work
    loyalty: int = Field(default=400, ge=0)


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


class Config(Strict):
    """All business config; `dir` is where it was read from (templates live under it)."""

    dir: Path
    store: StoreConfig
    verification: VerificationConfig
    packing: PackingConfig
    shipping: ShippingConfig
    messaging: MessagingConfig
    quality: QualityConfig
    pages: PagesConfig

    @model_validator(mode="after")
    def _money_rules_agree(self) -> Config:
        """Verification and packing know the same currencies (verification holds the others)."""
        risk, packing = set(self.verification.risk.max_order_value), set(self.packing.currencies)
        if risk != packing:
            raise ValueError(
                f"verification.yaml risk.max_order_value currencies {sorted(risk)} differ from "
                f"packing.yaml money thresholds {sorted(packing)}")
        return self


SECTIONS = ("store", "verification", "packing", "shipping", "messaging", "quality", "pages")
LINKS_BASE_URL_ENV = "JOURNEYS_LINKS_BASE_URL"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file missing: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _describe(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{path}: {where}: {first['msg']}"


@lru_cache(maxsize=4)
def load_config(config_dir: Path) -> Config:
    config_dir = Path(config_dir).resolve()
    sections: dict[str, Any] = {}
    for name in SECTIONS:
        path = config_dir / f"{name}.yaml"
        try:
            sections[name] = Config.model_fields[name].annotation.model_validate(_read_yaml(path))  # type: ignore[union-attr]
        except ValidationError as exc:
            raise ConfigError(_describe(exc, path)) from exc
    if base := os.environ.get(LINKS_BASE_URL_ENV):  # the mails point at this edge instead
        sections["store"] = sections["store"].model_copy(update={"links_base_url": base})
    try:
        return Config(dir=config_dir, **sections)
    except ValidationError as exc:
        raise ConfigError(f"{config_dir}: {exc.errors()[0]['msg']}") from exc


T = TypeVar("T", bound=BaseModel)


def section(cfg: Config, name: str, model: type[T]) -> T:
    """A further config file (configs/<name>.yaml) validated by the module that owns it."""
    return _load_section(cfg.dir, name, model)


@lru_cache(maxsize=32)
def _load_section(config_dir: Path, name: str, model: type[T]) -> T:
    path = config_dir / f"{name}.yaml"
    try:
        return model.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
