"""The canonical intake records: every input format is mapped into these before it is stored."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.numbers import is_currency
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

ZERO = Decimal("0")


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str):
        value = refuse_nul(value).strip()
        return value or None
    return value


def _lower(value: Any) -> Any:
    value = _blank_to_none(value)
    return value.lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    value = _blank_to_none(value)
    return value.upper() if isinstance(value, str) else value


def _as_utc(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise ValueError("outside the range of dates we can store") from None


def refuse_nul(value: Any) -> Any:
    """Text (also inside dicts and lists) without NUL characters: PostgreSQL cannot store them."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("contains a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_nul(key)
            refuse_nul(item)
    elif isinstance(value, list | tuple):
        for item in value:
            refuse_nul(item)
    return value


def _currency(value: str) -> str:
    code = value.strip().upper()
    if len(code) != 3 or not is_currency(code):
        raise ValueError(f"not an ISO 4217 currency code: {value!r}")
    return code


def _time_zone(name: str) -> str:
    """A zone ZoneInfo can load: mail timing uses it (a folder such as 'America' is none)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"not a known time zone: {name!r}") from None
    return name


def split_tags(value: Any) -> Any:
    """Shopify sends tags as one comma-separated string; CSV files may use `|`."""
    if isinstance(value, str):
        value = refuse_nul(value).replace("|", ",").split(",")
    if isinstance(value, list):
        refuse_nul(value)
        return [str(tag).strip() for tag in value if str(tag).strip()]
    return value


def _to_text(value: Any) -> Any:
    """External ids arrive as numbers (Shopify) or strings (CSV); we keep them as text."""
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return _blank_to_none(value)


def _text_values(value: Any) -> Any:
    if isinstance(value, dict):
        return refuse_nul({str(k): "" if v is None else str(v) for k, v in value.items()})
    return value


# Bounds are the store's column sizes, so a record that fits the schema also fits the table.
INT_MAX = 2_147_483_647
MONEY_LIMIT = Decimal(10) ** 14  # the store's NUMERIC(18, 4) holds up to 10^14 exclusive
# Finite (pydantic rejects NaN/inf), at most 4 decimals: what the database stores exactly.
Money = Annotated[Decimal, Field(ge=0, lt=MONEY_LIMIT, decimal_places=4)]
Count = Annotated[int, Field(ge=0, le=INT_MAX)]


def _optional_text(limit: int, before: Any = _blank_to_none) -> Any:
    """An optional string of at most `limit` characters; blank means missing."""
    return Annotated[Annotated[str, StringConstraints(max_length=limit)] | None,
                     BeforeValidator(before)]


Note = Annotated[str | None, BeforeValidator(_blank_to_none)]
Locale = _optional_text(20)
Short = _optional_text(64)
Code = _optional_text(100)
Text = _optional_text(200)
OptionalId = _optional_text(64, _to_text)
LowerText = _optional_text(100, _lower)
UpperText = _optional_text(20, _upper)
OptionalEmail = _optional_text(320, _lower)
TimeZone = Annotated[Annotated[str, StringConstraints(max_length=64), AfterValidator(_time_zone)]
                     | None, BeforeValidator(_blank_to_none)]
RequiredText = Annotated[str, StringConstraints(min_length=1, max_length=500),
                         BeforeValidator(_blank_to_none)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=64),
                      BeforeValidator(_to_text)]
UTCDateTime = Annotated[datetime, AfterValidator(_as_utc)]
Currency = Annotated[str, AfterValidator(_currency)]
Tags = Annotated[list[str], BeforeValidator(split_tags)]
TextDict = Annotated[dict[str, str], BeforeValidator(_text_values)]


class Canonical(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Shipping(Canonical):
    code: Code = None
    title: Text = None
    price: Money = ZERO


class DiscountCode(Canonical):
    code: RequiredText
    amount: Money = ZERO
    type: Text = None


class TaxLine(Canonical):
    title: RequiredText
    rate: Annotated[Decimal, Field(ge=0)] = ZERO
    price: Money = ZERO


class Address(Canonical):
    name: Text = None
    address1: Text = None
    address2: Text = None
    city: Text = None
    province_code: Text = None
    zip: Text = None
    country_code: UpperText = None
    phone: Text = None


class CustomerIn(Canonical):
    """What the order tells us about its customer; None means "not given, keep what we know"."""

    external_id: OptionalId = None
    email: OptionalEmail = None
    first_name: Text = None
    last_name: Text = None
    accepts_marketing: bool | None = None
    orders_count: Count | None = None
    tags: Tags | None = None
    locale: Locale = None
    timezone: TimeZone = None


class LineIn(Canonical):
    external_id: OptionalId = None
    sku: Code = None  # unknown SKUs are a verification hold, not an intake error
    title: RequiredText
    variant_title: Text = None
    quantity: Annotated[int, Field(ge=1, le=INT_MAX)]
    unit_price: Money
    total_discount: Money = ZERO
    grams: Count = 0
    gift_card: bool = False
    requires_shipping: bool = True  # False for gift cards and digital goods: never packed
    variant_id: OptionalId = None  # identifies the line when it has no SKU
    properties: TextDict = Field(default_factory=dict)


# Added in issue 13 (real Shopify orders); see OrderIn._later_defaults.
LATER_ORDER_FIELDS: dict[str, Any] = {"customer_note": None, "tip": ZERO, "duties": ZERO,
                                      "additional_fees": ZERO, "payment_gateways": []}
LATER_LINE_FIELDS: dict[str, Any] = {"requires_shipping": True, "variant_id": None}


class OrderIn(Canonical):
    """One order in our canonical schema (docs-snippets/canonical_schema.md describes it)."""

    source: Annotated[str, StringConstraints(min_length=1, max_length=20),
                      BeforeValidator(refuse_nul)] = "canonical"
    external_id: ExternalId
    name: Short = None
    email: OptionalEmail = None  # POS, phone and draft orders have none: stored, never mailed
    placed_at: UTCDateTime
    currency: Currency
    financial_status: Annotated[str, StringConstraints(min_length=1, max_length=30),
                                BeforeValidator(_lower)]
    subtotal: Money | None = None  # goods after discounts; computed from lines when missing
    discounts: Money = ZERO
    discount_codes: list[DiscountCode] = Field(default_factory=list)
    shipping: Shipping = Field(default_factory=Shipping)
    tax: Money = ZERO
    tax_lines: list[TaxLine] = Field(default_factory=list)
    taxes_included: bool = False
    # What a total also pays for beyond goods, shipping and tax (Shopify counts them in it).
    tip: Money = ZERO
    duties: Money = ZERO
    additional_fees: Money = ZERO
    total: Money | None = None  # computed when missing
    accepts_marketing: bool = False
    lines: list[LineIn]
    shipping_address: Address | None = None
    customer: CustomerIn = Field(default_factory=CustomerIn)
    customer_note: Note = None  # the buyer's note to the store (Shopify's `note`)
    gift_note: Note = None  # a message for the recipient (Shopify: a gift note attribute)
    note_attributes: TextDict = Field(default_factory=dict)
    tags: Tags = Field(default_factory=list)
    cancelled_at: UTCDateTime | None = None
    locale: Locale = None
    # How it was paid, as the source names its gateways (the invoice prints them).
    payment_gateways: list[Annotated[str, StringConstraints(min_length=1, max_length=64),
                                     BeforeValidator(refuse_nul)]] = Field(
        default_factory=list, max_length=10)

    # Where the record came from, kept out of the payload hash (not fields).
    _raw: str | None = PrivateAttr(default=None)
    _origin: str | None = PrivateAttr(default=None)

    @field_validator("lines")
    @classmethod
    def _at_least_one_line(cls, lines: list[LineIn]) -> list[LineIn]:
        if not lines:
            raise ValueError("an order needs at least one line item")
        return lines

    @model_validator(mode="after")
    def _fill_totals(self) -> OrderIn:
        """Computes subtotal and total when missing; consent given on either level counts."""
        if self.customer.accepts_marketing is None and "accepts_marketing" in self.model_fields_set:
            self.customer.accepts_marketing = self.accepts_marketing
        self.accepts_marketing = self.accepts_marketing or bool(self.customer.accepts_marketing)
        goods = sum((line.unit_price * line.quantity for line in self.lines), ZERO)
        if self.subtotal is None:
            if self.discounts > goods:
                raise ValueError(f"discounts {self.discounts} exceed the goods value {goods}")
            self.subtotal = goods - self.discounts
        if self.total is None:
            self.total = self.computed_total()
        if max(goods, self.total) >= MONEY_LIMIT:
            raise ValueError(f"order value {max(goods, self.total)} is too large to store")
        return self

    def computed_total(self) -> Decimal:
        """Subtotal + shipping + tax (unless prices include it) + tip, duties and fees."""
        tax = ZERO if self.taxes_included else self.tax
        extras = self.tip + self.duties + self.additional_fees
        return (self.subtotal or ZERO) + self.shipping.price + tax + extras

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json", exclude=self._later_defaults())
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def _later_defaults(self) -> dict[str, Any]:
        """Fields added after orders were first stored, left out of the hash while at their
        default: an older record that says nothing of them still hashes as it did."""
        top: dict[str, Any] = {name: True for name, default in LATER_ORDER_FIELDS.items()
                               if getattr(self, name) == default}
        lines = {i: {name for name, default in LATER_LINE_FIELDS.items()
                     if getattr(line, name) == default} for i, line in enumerate(self.lines)}
        lines = {i: names for i, names in lines.items() if names}
        return top | ({"lines": lines} if lines else {})

    def payload_hash(self) -> str:
        return sha256_text(self.canonical_json())

    def raw_text(self) -> str:
        return self._raw if self._raw is not None else self.canonical_json()

    def origin(self) -> str | None:
        return self._origin

    def located(self, raw: str, origin: str) -> OrderIn:
        """Remember the raw text and file position, for quarantine if it is refused later."""
        self._raw, self._origin = raw, origin
        return self


class ProductIn(Canonical):
    """One sellable variant, keyed by SKU."""

    sku: Annotated[str, StringConstraints(min_length=1, max_length=100), BeforeValidator(_to_text)]
    title: RequiredText
    category: LowerText = None
    tags: Annotated[list[str], BeforeValidator(split_tags),
                    AfterValidator(lambda tags: [t.lower() for t in tags])] = Field(
        default_factory=list)
    stock: Annotated[int, Field(ge=-INT_MAX, le=INT_MAX)] = 0  # negative when oversold
    grams: Count = 0
    price: Money | None = None
    attributes: Annotated[dict[str, Any], BeforeValidator(refuse_nul)] = Field(
        default_factory=dict)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Rejected:
    """A record we cannot accept; it is quarantined whole, with one reason per field."""

    kind: str  # order | product
    source: str
    raw: str
    reasons: list[dict[str, str]]
    origin: str | None = None
    external_id: str | None = None

    @property
    def fingerprint(self) -> str:
        return sha256_text(self.raw)
