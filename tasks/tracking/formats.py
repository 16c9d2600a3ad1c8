"""Reading shipment and tracking-event files (JSON Lines) into canonical records or rejections.

Shipments: Shopify fulfillment objects, Shopify order objects with `fulfillments[]`, or our
canonical shipment record. Events: AfterShip webhook bodies or our canonical event record.
The format is recognised per record; `fmt` forces one. Nothing here touches the database.

Text that later becomes part of a key, a path or a header (tracking numbers, fulfillment and
event ids, sub-tags) is trimmed and refused if it holds a control or invisible format character;
other characters ('#', '/', emoji) are legal in carriers' numbers and kept: whatever is built
from them (effect keys, links, archive names) makes them safe itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tasks.intake.formats.common import (
    IntakeError,
    _guard,
    _json_records,
    _open,
    validation_reasons,
)
from tasks.intake.schema import Rejected, UTCDateTime, refuse_nul

SHIPMENT_FORMATS = ("shopify", "canonical")
EVENT_FORMATS = ("aftership", "canonical")
SHIPMENT, EVENT = "shipment", "tracking_event"

# AfterShip's normalised delivery statuses (REFERENCE.md).
TAGS = ("Pending", "InfoReceived", "InTransit", "OutForDelivery", "AttemptFail", "Delivered",
        "AvailableForPickup", "Exception", "Expired")
# Shopify's tracking_company → AfterShip courier slug; anything else is slugified.
CARRIER_SLUGS = {
    "ups": "ups", "usps": "usps", "fedex": "fedex", "dhl": "dhl", "dhl express": "dhl",
    "dhl ecommerce": "dhl-global-mail", "canada post": "canada-post", "royal mail": "royal-mail",
    "australia post": "australia-post", "dpd": "dpd", "gls": "gls", "ontrac": "ontrac",
}
# Shopify fulfillment statuses: only `success` ships; pending/open are not shipped yet.
SHIPPED_FULFILLMENT = "success"
WAITING_FULFILLMENT = ("pending", "open")
FAILED_FULFILLMENT = ("cancelled", "error", "failure")
FulfillmentStatus = Literal["pending", "open", "success", "cancelled", "error", "failure"]
# AfterShip webhook events (the body's `event`); a body without one is a tracking update.
TRACKING_UPDATE, EDD_REVISE, PENDING_TIME = "tracking_update", "edd_revise", "tracking_pending_time"
EventKind = Literal["tracking_update", "edd_revise", "tracking_pending_time"]
# Unicode categories that must never reach a key, a path or a header: controls (newline, tab,
# NUL, DEL, C1), format characters (zero-width, bidi overrides), surrogates, line separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def carrier_slug(value: Any) -> Any:
    """'DHL Express' → 'dhl', 'Some Carrier' → 'some-carrier'; blank → None."""
    if not isinstance(value, str) or not value.strip():
        return None if value in (None, "") else value
    name = value.strip().lower()
    return CARRIER_SLUGS.get(name) or re.sub(r"[^a-z0-9]+", "-", name).strip("-") or None


def _text(limit: int) -> Any:
    """Required text of at most `limit` characters; numbers are kept as text."""
    return Annotated[str, StringConstraints(min_length=1, max_length=limit, strip_whitespace=True),
                     BeforeValidator(_number_as_text)]


def _number_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) else refuse_nul(value)


def refuse_control(value: Any) -> Any:
    """Trimmed text without control or invisible format characters (it goes into keys)."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    for char in value:
        if unicodedata.category(char) in UNSAFE_CATEGORIES:
            raise ValueError(f"contains a control character (U+{ord(char):04X}); "
                             "it cannot be part of a key")
    return value


def _key_text(value: Any) -> Any:
    return refuse_control(_number_as_text(value))


def _key(limit: int) -> Any:
    """Required text that becomes part of keys: trimmed, no control characters."""
    return Annotated[str, StringConstraints(min_length=1, max_length=limit),
                     BeforeValidator(_key_text)]


def _optional_key(limit: int) -> Any:
    """Like `_key`, but blank or missing is None."""
    return Annotated[str | None, StringConstraints(min_length=1, max_length=limit),
                     BeforeValidator(lambda v: _key_text(v) or None)]


def _fulfillment_status(value: Any) -> Any:
    """Shopify's status, lower-cased; a fulfillment without one is taken as shipped."""
    if value is None or value == "":
        return SHIPPED_FULFILLMENT
    return value.strip().lower() if isinstance(value, str) else value


def _event_kind(value: Any) -> Any:
    return TRACKING_UPDATE if value is None or value == "" else value


def _clipped(limit: int) -> Any:
    """Optional free text clipped to `limit` characters (carrier messages can be long)."""
    return Annotated[str | None, BeforeValidator(
        lambda v: (refuse_nul(str(v)).strip()[:limit] or None) if v is not None else None)]


def _day(value: Any) -> Any:
    """An ISO date, or the date part of an ISO date-time (AfterShip sends either)."""
    if isinstance(value, str) and len(value) > 10 and value[10] in "T ":
        return value[:10]
    return value or None


OptionalCarrier = Annotated[str | None, StringConstraints(max_length=60),
                            BeforeValidator(carrier_slug)]
Day = Annotated[date | None, BeforeValidator(_day)]
SafeSubtag = Annotated[str | None, StringConstraints(max_length=40), BeforeValidator(
    lambda v: (refuse_control(refuse_nul(str(v))) or None) if v is not None else None)]


class Located(BaseModel):
    """A record that remembers its raw text and file position, for quarantine."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    _raw: str = PrivateAttr(default="")
    _origin: str | None = PrivateAttr(default=None)
    _source: str = PrivateAttr(default="canonical")

    def located(self, raw: str, origin: str | None, source: str) -> Any:
        self._raw, self._origin, self._source = raw, origin, source
        return self

    def rejected(self, kind: str, reasons: list[dict[str, str]], key: str | None) -> Rejected:
        """This record as a quarantine entry with `reasons` (built in code: its JSON)."""
        raw = self._raw or self.model_dump_json()
        return Rejected(kind, self._source, raw, reasons, self._origin, key)


class ShipmentIn(Located):
    """One parcel of an order, whatever format announced it.

    A parcel is known by its carrier and tracking number, or (before the feed gives those) by
    the source's fulfillment id; `status` is the fulfillment's (Shopify's), `success` if none.
    """

    order_source: _text(20) = "canonical"
    order_external_id: _text(64)
    fulfillment_id: _optional_key(64) = None
    status: Annotated[FulfillmentStatus, BeforeValidator(_fulfillment_status)] = "success"
    carrier: OptionalCarrier = Field(default=None, validate_default=True)
    tracking_number: _optional_key(100) = Field(default=None, validate_default=True)
    tracking_url: _clipped(500) = None
    shipped_at: UTCDateTime
    line_items: Annotated[list[dict[str, Any]], BeforeValidator(refuse_nul)] = Field(
        default_factory=list)

    @field_validator("carrier", "tracking_number")
    @classmethod
    def _identified(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and not info.data.get("fulfillment_id"):
            raise ValueError("required: a parcel needs a carrier and a tracking number "
                             "(or the fulfillment id that announced it)")
        return value


class TrackingEventIn(Located):
    """One carrier event for one tracking number."""

    event_id: _key(100)
    event: Annotated[EventKind, BeforeValidator(_event_kind)] = TRACKING_UPDATE
    tracking_number: _key(100)
    carrier: OptionalCarrier = None
    order_id: _clipped(200) = None  # the order the carrier's tracking names, when it names one
    order_number: _clipped(200) = None
    tag: _text(30)
    subtag: SafeSubtag = None
    occurred_at: UTCDateTime
    message: _clipped(500) = None
    location: _clipped(200) = None
    expected_delivery: Day = None

    @field_validator("tag")
    @classmethod
    def _known_tag(cls, tag: str) -> str:
        if tag not in TAGS:
            raise ValueError(f"not an AfterShip status tag: {tag!r}")
        return tag


# ---------------------------------------------------------------- public entry points


def read_shipments(path: Path | str, fmt: str | None = None) -> Iterator[ShipmentIn | Rejected]:
    """Shipments from a JSON Lines file, in file order (an order object may hold several)."""
    path = _checked(Path(path), fmt, SHIPMENT_FORMATS)
    return _guard(path, _shipments(path, fmt))


def _shipments(path: Path, fmt: str | None) -> Iterator[ShipmentIn | Rejected]:
    for number, text, data in _json_records(path):
        origin = f"{path.name}:line {number}"
        if isinstance(data, str):
            yield Rejected(SHIPMENT, fmt or "unknown", text, _whole(data), origin)
        else:
            yield from shipments_from_json(data, fmt or shipment_format(data), text, origin)


def read_events(path: Path | str, fmt: str | None = None) -> Iterator[TrackingEventIn | Rejected]:
    """Tracking events from a JSON Lines file, one event per line, in file order."""
    path = _checked(Path(path), fmt, EVENT_FORMATS)
    return _guard(path, _events(path, fmt))


def _events(path: Path, fmt: str | None) -> Iterator[TrackingEventIn | Rejected]:
    for number, text, data in _json_records(path):
        origin = f"{path.name}:line {number}"
        if isinstance(data, str):
            yield Rejected(EVENT, fmt or "unknown", text, _whole(data), origin)
        else:
            yield event_from_json(data, fmt or event_format(data), text, origin)


def shipment_format(data: dict[str, Any]) -> str:
    """Canonical records name `order_external_id`; everything else is Shopify's."""
    return "canonical" if "order_external_id" in data else "shopify"


def event_format(data: dict[str, Any]) -> str:
    """AfterShip webhook bodies wrap the tracking in `msg`."""
    return "aftership" if "msg" in data else "canonical"


def _checked(path: Path, fmt: str | None, formats: tuple[str, ...]) -> Path:
    if fmt is not None and fmt not in formats:
        raise IntakeError(f"unknown format {fmt!r}; expected one of {', '.join(formats)}")
    _open(path).close()  # a missing file is one line, not a traceback
    return path


def _whole(reason: str) -> list[dict[str, str]]:
    return [{"field": "_record", "reason": reason}]


def _validate(model: type[Located], data: dict[str, Any]) -> Located | list[dict[str, str]]:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return validation_reasons(exc)


# ---------------------------------------------------------------- shipments


def shipments_from_json(
    data: dict[str, Any], fmt: str, raw: str, origin: str
) -> list[ShipmentIn | Rejected]:
    """One JSON object → its shipments (a Shopify order may carry several), or a rejection."""
    try:
        if fmt == "canonical":
            mapped = [data]
        elif isinstance(data.get("fulfillments"), list):
            order_id = data.get("id")
            mapped = [m for f in data["fulfillments"] for m in shopify_fulfillment(f, order_id)]
        else:
            mapped = shopify_fulfillment(data, data.get("order_id"))
    except (TypeError, AttributeError, ValueError) as exc:
        return [Rejected(SHIPMENT, fmt, raw, _whole(f"unexpected structure: {exc}"), origin)]
    return [_shipment(item, fmt, raw, origin) for item in mapped]


def _shipment(data: dict[str, Any], fmt: str, raw: str, origin: str) -> ShipmentIn | Rejected:
    result = _validate(ShipmentIn, data)
    if isinstance(result, list):
        return Rejected(SHIPMENT, fmt, raw, result, origin, _short(data.get("order_external_id")))
    return result.located(raw, origin, fmt)


def shopify_fulfillment(obj: dict[str, Any], order_id: Any) -> list[dict[str, Any]]:
    """A Shopify fulfillment → one canonical shipment dict per tracking number (one if none).

    Its status travels with it: intake ships `success`, waits on pending/open and undoes a
    parcel whose fulfillment was cancelled or failed.
    """
    base = {"order_source": "shopify", "order_external_id": order_id,
            "fulfillment_id": obj.get("id"), "status": obj.get("status"),
            "carrier": obj.get("tracking_company"), "shipped_at": obj.get("created_at"),
            "line_items": [_shopify_item(item) for item in obj.get("line_items") or []]}
    numbers = obj.get("tracking_numbers") or [obj.get("tracking_number")]
    urls = obj.get("tracking_urls") or [obj.get("tracking_url")]
    return [base | {"tracking_number": number, "tracking_url": urls[i] if i < len(urls) else None}
            for i, number in enumerate(numbers)]


def _shopify_item(item: dict[str, Any]) -> dict[str, Any]:
    fields = ("id", "sku", "title", "variant_title", "quantity")
    return {name: item.get(name) for name in fields if item.get(name) is not None}


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:64]


# ---------------------------------------------------------------- events


def event_from_json(
    data: dict[str, Any], fmt: str, raw: str, origin: str
) -> TrackingEventIn | Rejected:
    """One JSON event (AfterShip webhook body or canonical) → TrackingEventIn or a rejection."""
    try:
        mapped = aftership_event(data) if fmt == "aftership" else data
    except (TypeError, AttributeError, ValueError) as exc:
        return Rejected(EVENT, fmt, raw, _whole(f"unexpected structure: {exc}"), origin,
                        _short(data.get("event_id")))
    result = _validate(TrackingEventIn, mapped)
    if isinstance(result, list):
        if fmt == "aftership":
            result = [r | {"field": _aftership_name(r["field"])} for r in result]
        return Rejected(EVENT, fmt, raw, result, origin, _short(data.get("event_id")))
    return result.located(raw, origin, fmt)


def aftership_event(body: dict[str, Any]) -> dict[str, Any]:
    """The webhook's current tag, timed by its latest checkpoint (or the webhook's `ts`).

    `event` says which kind of webhook it is (a body without one is a tracking update);
    `msg.order_id` / `msg.order_number` name the merchant's order when the tracking has one.
    """
    msg = body.get("msg")
    if not isinstance(msg, dict):
        raise ValueError("msg is not an object")
    checkpoints = [c for c in msg.get("checkpoints") or [] if isinstance(c, dict)]
    latest = max(checkpoints, key=lambda c: _instant(c.get("checkpoint_time")), default={})
    kind = body.get("event")
    default_tag = "Pending" if kind == PENDING_TIME else None
    return {
        "event_id": body.get("event_id"), "event": kind,
        "tracking_number": msg.get("tracking_number"), "carrier": msg.get("slug"),
        "order_id": msg.get("order_id"), "order_number": msg.get("order_number"),
        "tag": msg.get("tag") or latest.get("tag") or default_tag,
        "subtag": msg.get("subtag") or latest.get("subtag"),
        "occurred_at": latest.get("checkpoint_time") or _ts(body.get("ts")),
        "message": latest.get("message"), "location": _location(latest.get("location")),
        "expected_delivery": msg.get("expected_delivery"),
    }


def _instant(value: Any) -> datetime:
    """For ordering checkpoints only: unparseable times sort first."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ts(value: Any) -> Any:
    """AfterShip's `ts` is Unix seconds; an ISO string is passed through."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):  # NaN, ±inf, beyond year 9999
            return value  # validation then says why it is not a time
    return value


def _location(value: Any) -> Any:
    if isinstance(value, dict):
        return ", ".join(str(v) for v in value.values() if v) or None
    return value


AFTERSHIP_NAMES = {"tracking_number": "msg.tracking_number", "carrier": "msg.slug",
                   "tag": "msg.tag", "subtag": "msg.subtag", "occurred_at": "ts",
                   "expected_delivery": "msg.expected_delivery", "order_id": "msg.order_id",
                   "order_number": "msg.order_number"}


def _aftership_name(field: str) -> str:
    return AFTERSHIP_NAMES.get(field, field)
