"""The journey's state: typed SQLAlchemy 2 models that work on SQLite and PostgreSQL.

Personal data is marked on its column: ``info={"personal": KIND, "erase": HOW}``. KIND says
what it is (email, name, address, phone, birthday, identifier, free_text: text that may quote
the customer); HOW is how erasing a customer scrubs it (the vocabulary and the tables' reach
are in tasks/privacy_scrub.py). Erasure derives what to scrub from these marks, and
tests/unit/test_personal_data_marks.py fails for a column that looks personal and is unmarked:
a new column with personal data is marked here, and is then erased with nothing else to edit.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """Exact decimal money: NUMERIC on PostgreSQL, text on SQLite (which has no exact decimal)."""

    impl = Numeric(18, 4)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(18, 4))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value)).normalize() + Decimal("0.00")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        Decimal: Money(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        list[str]: JSON(),
        list[dict[str, Any]]: JSON(),
    }


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Normalised (lower-case); None for a customer the source gave no address (POS, phone).
    email: Mapped[str | None] = mapped_column(
        String(320), unique=True, info={"personal": "email", "erase": "pseudonym"}
    )
    external_id: Mapped[str | None] = mapped_column(  # the source's id
        String(64), index=True, info={"personal": "identifier", "erase": "null"}
    )
    first_name: Mapped[str | None] = mapped_column(
        String(200), info={"personal": "name", "erase": "erased_name"}
    )
    last_name: Mapped[str | None] = mapped_column(
        String(200), info={"personal": "name", "erase": "null"}
    )
    accepts_marketing: Mapped[bool] = mapped_column(Boolean, default=False)
    orders_count: Mapped[int] = mapped_column(Integer, default=0)  # as reported by the source
    tags: Mapped[list[str]] = mapped_column(
        default=list, info={"personal": "free_text", "erase": "empty"}
    )
    locale: Mapped[str | None] = mapped_column(String(20))
    timezone: Mapped[str | None] = mapped_column(String(64))
    birthday: Mapped[date | None] = mapped_column(
        Date, info={"personal": "birthday", "erase": "null"}
    )
    # Offers skip birthdays told < 30 days ahead.
    birthday_captured_at: Mapped[datetime | None] = mapped_column(
        info={"personal": "birthday", "erase": "null"}
    )
    loyalty_enrolled_at: Mapped[datetime | None]
    loyalty_tier: Mapped[str | None] = mapped_column(String(30))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    category: Mapped[str | None] = mapped_column(String(100), index=True)
    tags: Mapped[list[str]] = mapped_column(default=list)
    stock: Mapped[int] = mapped_column(Integer, default=0)  # on hand, as the catalog feed says
    # Units verified orders hold and the feed may not know of yet; available = stock - reserved.
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    grams: Mapped[int] = mapped_column(Integer, default=0)
    price: Mapped[Decimal | None]
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime]


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (UniqueConstraint("source", "external_id"), Index(None, "state"))

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(20))  # shopify | canonical | csv
    external_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(64))  # the store's display number, e.g. #1001
    payload_hash: Mapped[str] = mapped_column(String(64))
    # Hashes of versions this order replaced: a late or repeated older version is a duplicate.
    previous_hashes: Mapped[list[str]] = mapped_column(default=list)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    email: Mapped[str | None] = mapped_column(  # None: the order gets no mail
        String(320), info={"personal": "email", "erase": "pseudonym"}
    )
    currency: Mapped[str] = mapped_column(String(3))
    locale: Mapped[str | None] = mapped_column(String(20))
    financial_status: Mapped[str] = mapped_column(String(30))
    subtotal: Mapped[Decimal]
    discounts: Mapped[Decimal]
    shipping: Mapped[Decimal]
    tax: Mapped[Decimal]
    total: Mapped[Decimal]
    taxes_included: Mapped[bool] = mapped_column(Boolean, default=False)
    discount_codes: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    tax_lines: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    shipping_code: Mapped[str | None] = mapped_column(String(100))
    shipping_title: Mapped[str | None] = mapped_column(String(200))
    shipping_address: Mapped[dict[str, Any]] = mapped_column(
        default=dict, info={"personal": "address", "erase": "keep_region"}
    )
    gift_note: Mapped[str | None] = mapped_column(
        Text, info={"personal": "free_text", "erase": "placeholder"}
    )
    # The buyer's note to the store. Not erased today (issue 15 keeps erasure as it was).
    customer_note: Mapped[str | None] = mapped_column(
        Text, info={"personal": "free_text", "erase": "kept"}
    )
    note_attributes: Mapped[dict[str, Any]] = mapped_column(
        default=dict, info={"personal": "free_text", "erase": "mask_values"}
    )
    tags: Mapped[list[str]] = mapped_column(
        default=list, info={"personal": "free_text", "erase": "redact"}
    )
    accepts_marketing: Mapped[bool] = mapped_column(Boolean, default=False)
    placed_at: Mapped[datetime]
    cancelled_at: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(30))
    hold_reason: Mapped[str | None] = mapped_column(
        String(500), info={"personal": "free_text", "erase": "redact"}
    )
    promised_delivery: Mapped[date | None] = mapped_column(Date)
    shipped_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    packing: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), info={"personal": "free_text", "erase": "redact_keep_documents"}
    )
    stock_reserved: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # The source's own `updated_at` of the version stored: an older version arriving late loses.
    source_updated_at: Mapped[datetime | None]
    # A replacement (an exchange or a service case's replacement) names the order it replaces;
    # it is never charged (total 0) and runs verification, packing and confirmation like any.
    replaces_order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="SET NULL"), index=True
    )
    # How the order was paid, as the source names its gateways (Shopify `payment_gateway_names`,
    # e.g. ["shopify_payments"]); None: not recorded (orders stored before, other sources).
    payment_gateways: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))

    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", order_by="OrderLine.position", cascade="all, delete-orphan"
    )
    customer: Mapped[Customer] = relationship()


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str | None] = mapped_column(String(64))
    sku: Mapped[str | None] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(500))
    variant_title: Mapped[str | None] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal]
    total_discount: Mapped[Decimal]
    grams: Mapped[int] = mapped_column(Integer, default=0)
    gift_card: Mapped[bool] = mapped_column(Boolean, default=False)
    # False for gift cards and digital goods: never packed, shipped or promised a date.
    requires_shipping: Mapped[bool] = mapped_column(Boolean, default=True)
    variant_id: Mapped[str | None] = mapped_column(String(64))  # identifies a line without SKU
    refunded_quantity: Mapped[int] = mapped_column(Integer, default=0)  # by the source's refunds
    # What the customer typed (engravings, names); titles are the shop's.
    properties: Mapped[dict[str, Any]] = mapped_column(
        default=dict, info={"personal": "free_text", "erase": "mask_values"}
    )

    order: Mapped[Order] = relationship(back_populates="lines")

    @property
    def kept_quantity(self) -> int:
        """Units the customer keeps after refunds: what is reserved, packed and confirmed."""
        return max(self.quantity - (self.refunded_quantity or 0), 0)


class OrderEvent(Base):
    """The per-order timeline: every state change and notable fact, append-only."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))  # state | updated | note | decision ...
    from_state: Mapped[str | None] = mapped_column(String(30))
    to_state: Mapped[str | None] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(100), default="journeys")
    detail: Mapped[dict[str, Any]] = mapped_column(
        default=dict, info={"personal": "free_text", "erase": "redact"}
    )


class Step(Base):
    """One row per order and step: what is due next, and when. A stage never waits."""

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("order_id", "name"),
        Index(None, "name", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(40))
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|done|held|closed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(
        String(500), info={"personal": "free_text", "erase": "redact"}
    )
    updated_at: Mapped[datetime]


class Message(Base):
    """The outbox: written with the state change that causes it, sent later by the dispatcher."""

    __tablename__ = "messages"
    __table_args__ = (Index(None, "status", "not_before"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    effect_key: Mapped[str] = mapped_column(String(200), unique=True)
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), index=True
    )
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    template: Mapped[str] = mapped_column(String(60))
    version: Mapped[int] = mapped_column(Integer)
    msg_class: Mapped[str] = mapped_column(String(20))  # transactional | marketing
    priority: Mapped[int] = mapped_column(Integer, default=50)
    # What the message is about beyond the order (a SKU, a category): caps such as "one review
    # request per product per 12 months" are counted on it.
    topic: Mapped[str | None] = mapped_column(String(100))
    to_addr: Mapped[str] = mapped_column(
        String(320), info={"personal": "email", "erase": "pseudonym"}
    )
    message_id: Mapped[str] = mapped_column(String(200))  # RFC 5322 Message-ID, stable
    context: Mapped[dict[str, Any]] = mapped_column(  # render context: names, address, links
        default=dict, info={"personal": "free_text", "erase": "erased_marker"}
    )
    status: Mapped[str] = mapped_column(String(20), default="pending")
    reason: Mapped[str | None] = mapped_column(
        String(500), info={"personal": "free_text", "erase": "redact"}
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    artifact_ref: Mapped[str | None] = mapped_column(String(500))


class Artifact(Base):
    """A document or message archived for an order; `ref` points into a bundle in the store."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    effect_key: Mapped[str] = mapped_column(String(200), unique=True)
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(40))  # packing_slip | invoice | email ...
    ref: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    # Indexed: the print step looks for the documents archived in the last days
    # (tasks/print_batch.py).
    created_at: Mapped[datetime] = mapped_column(index=True)


class Quarantine(Base):
    """A record that could not be accepted, kept whole with its reasons until released."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("kind", "fingerprint"), Index(None, "status"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))  # order | product | ...
    source: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the raw record
    payload: Mapped[str] = mapped_column(  # the raw record
        Text, info={"personal": "free_text", "erase": "erasure_note"}
    )
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(  # [{field, reason}]
        default=list, info={"personal": "free_text", "erase": "redact"}
    )
    origin: Mapped[str | None] = mapped_column(String(500))  # file and line it came from
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | released
    created_at: Mapped[datetime]
    released_at: Mapped[datetime | None]


class RunManifest(Base):
    """What one run received and what became of it; received must equal the accounted sum."""

    __tablename__ = "run_manifests"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)  # ingest-orders | sweep | ...
    at: Mapped[datetime]
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    balanced: Mapped[bool] = mapped_column(Boolean)
    ref: Mapped[str | None] = mapped_column(String(500))  # the archived manifest JSON


class Shipment(Base):
    """One parcel of an order; an order is delivered when all its shipments are."""

    __tablename__ = "shipments"
    __table_args__ = (UniqueConstraint("tracking_number", "carrier"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    # The source's fulfillment id: a parcel announced without carrier or number is still one.
    fulfillment_id: Mapped[str | None] = mapped_column(String(64), index=True)
    carrier: Mapped[str | None] = mapped_column(String(60))  # AfterShip slug, e.g. ups, dhl
    tracking_number: Mapped[str | None] = mapped_column(String(100), index=True)
    tracking_url: Mapped[str | None] = mapped_column(
        String(500), info={"personal": "free_text", "erase": "redact"}
    )
    status: Mapped[str] = mapped_column(String(30))  # AfterShip tag: InTransit, Delivered ...
    substatus: Mapped[str | None] = mapped_column(String(40))  # e.g. Exception_011
    expected_delivery: Mapped[date | None] = mapped_column(Date)
    line_items: Mapped[list[dict[str, Any]]] = mapped_column(
        default=list, info={"personal": "free_text", "erase": "redact"}
    )
    status_at: Mapped[datetime | None]  # time of the event that set `status`
    shipped_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TrackingEvent(Base):
    """Every tracking event received, kept for the timeline even when stale or out of order."""

    __tablename__ = "tracking_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(100), unique=True)
    shipment_id: Mapped[int] = mapped_column(
        ForeignKey("shipments.id", ondelete="CASCADE"), index=True
    )
    tag: Mapped[str] = mapped_column(String(30))
    subtag: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str | None] = mapped_column(  # a scan's text may name the recipient
        String(500), info={"personal": "free_text", "erase": "redact"}
    )
    location: Mapped[str | None] = mapped_column(
        String(200), info={"personal": "address", "erase": "redact"}
    )
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    applied: Mapped[bool] = mapped_column(Boolean)  # False: stale, never moved the shipment


class InboxDelivery(Base):
    """A webhook delivery, stored before it is acknowledged; drained by every sweep.

    The raw body is kept byte for byte (its HMAC was checked on these bytes) so that processing
    can be retried or replayed; (provider, delivery_id) is the sender's retry identity.
    """

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("provider", "delivery_id"), Index(None, "status", "id"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))  # shopify | aftership | ses | reconcile
    topic: Mapped[str] = mapped_column(String(60))
    delivery_id: Mapped[str] = mapped_column(String(200))
    event_id: Mapped[str | None] = mapped_column(String(200))
    triggered_at: Mapped[datetime | None]
    shop: Mapped[str | None] = mapped_column(String(255))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default="pending")  # see tasks/inbox
    reason: Mapped[str | None] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None]


class Suppression(Base):
    """Addresses we must not mail marketing (or anything, for bounces): hashed, kept forever."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # sha256 of lower(email); NULL for an erased address, which only has the keyed hash below.
    email_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # HMAC-SHA256 of lower(email) under the secret key: cannot be reversed by hashing guesses.
    email_hmac: Mapped[str | None] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(30))  # unsubscribe | bounce | complaint | erasure
    source: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]


class FeedbackResponse(Base):
    """A customer's survey answer: the delivery survey (a rating 1-5 and issue tags) or, with
    topic "fit", the apparel fit survey (no rating; the choice is the one tag)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source_key: Mapped[str] = mapped_column(String(200), unique=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    topic: Mapped[str] = mapped_column(String(20), default="delivery", server_default="delivery")
    rating: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(
        Text, info={"personal": "free_text", "erase": "placeholder"}
    )
    tags: Mapped[list[str]] = mapped_column(default=list)
    received_at: Mapped[datetime]


class ServiceCase(Base):
    """Service recovery for one order: a proposal, then an operator's decision."""

    __tablename__ = "service_cases"
    __table_args__ = (Index(None, "status"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    effect_key: Mapped[str] = mapped_column(String(200), unique=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(
        String(200), info={"personal": "free_text", "erase": "redact"}
    )
    proposed: Mapped[str] = mapped_column(String(30))  # replacement | refund | keep_with_credit
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | resolved
    decision: Mapped[str | None] = mapped_column(String(30))
    refund_amount: Mapped[Decimal | None]
    decided_by: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(
        Text, info={"personal": "free_text", "erase": "redact"}
    )
    opened_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]


class LoyaltyEntry(Base):
    """The append-only points ledger; a reversal is a new entry, never an edit."""

    __tablename__ = "loyalty_ledger"
    __table_args__ = (Index(None, "customer_id", "status"), Index(None, "status", "available_at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source_key: Mapped[str] = mapped_column(String(200), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(20))  # earn | reverse | approve | adjust
    points: Mapped[int] = mapped_column(Integer)  # signed
    status: Mapped[str] = mapped_column(String(20))  # pending | approved
    rule_version: Mapped[str] = mapped_column(String(30))
    basis: Mapped[Decimal | None]  # the money the points were computed on
    available_at: Mapped[datetime | None]  # pending → approved when the return window closes
    created_at: Mapped[datetime]


class Erasure(Base):
    """One "right to be forgotten" request: who asked, when, and the archive work still open.

    Holds no personal data: `subject` is the keyed hash the suppression list uses, so a repeated
    request is recognised after the address itself is gone from the database.
    """

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), unique=True)
    actor: Mapped[str] = mapped_column(String(100))
    requested_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]  # set once no archive object holds the customer
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Replaced archive objects not yet deleted (refs were switched, the delete may have failed).
    stale_objects: Mapped[list[str]] = mapped_column(default=list)


class PrivacyRequest(Base):
    """A privacy obligation from Shopify's mandatory webhooks (tasks/privacy_requests.py).

    Holds no e-mail address: `subject` is the keyed hash erasure uses. Open while
    `completed_at` is NULL; `due_at` is when Shopify's 30 days run out.
    """

    __tablename__ = "privacy_requests"
    __table_args__ = (Index(None, "completed_at", "due_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_key: Mapped[str] = mapped_column(String(200), unique=True)  # the effect key
    kind: Mapped[str] = mapped_column(String(30))  # customers/data_request | .../redact | shop/..
    shop_domain: Mapped[str | None] = mapped_column(String(255))
    shopify_request_id: Mapped[str | None] = mapped_column(String(64))  # data_request.id
    shopify_customer_id: Mapped[str | None] = mapped_column(String(64))  # as given
    subject: Mapped[str | None] = mapped_column(String(64))  # HMAC of the e-mail as given
    customer_ids: Mapped[list[Any]] = mapped_column(default=list)  # ours, found for it
    received_at: Mapped[datetime]
    due_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    export_ref: Mapped[str | None] = mapped_column(String(500))
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    note: Mapped[str | None] = mapped_column(String(500))  # what is left to do, or what was done


class Review(Base):
    """A product review a customer wrote on /r/{token} (flows/pages/reviews.py), one per order
    line; shown only once an operator approved it. Never filtered by rating: a rejection names
    a content rule (configs/pages.yaml)."""

    __tablename__ = "reviews"
    __table_args__ = (Index(None, "status", "submitted_at"), Index(None, "sku"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    effect_key: Mapped[str] = mapped_column(String(200), unique=True)  # review:<order line id>
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    order_line_id: Mapped[int] = mapped_column(ForeignKey("order_lines.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(String(100))
    rating: Mapped[int] = mapped_column(Integer)  # 1-5 stars
    # The customer's own words and name. Not erased today (issue 15 keeps erasure as it was).
    title: Mapped[str | None] = mapped_column(
        String(200), info={"personal": "free_text", "erase": "kept"}
    )
    body: Mapped[str | None] = mapped_column(
        Text, info={"personal": "free_text", "erase": "kept"}
    )
    display_name: Mapped[str] = mapped_column(  # "Ava N." by default
        String(100), info={"personal": "name", "erase": "kept"}
    )
    verified_buyer: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|approved|rejected
    reject_reason: Mapped[str | None] = mapped_column(String(100))
    moderated_by: Mapped[str | None] = mapped_column(String(100))
    moderated_at: Mapped[datetime | None]
    submitted_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class MailPreference(Base):
    """One marketing topic a customer's address turned off or back on (the /u/{token} page).

    Keyed like the suppression list (sha256 of the lower-cased address), so it holds no address
    and outlives an erasure; the governor skips marketing of an unsubscribed topic."""

    __tablename__ = "mail_preferences"
    __table_args__ = (UniqueConstraint("email_hash", "topic"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(30))  # reviews | offers | care | birthday | loyalty
    subscribed: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[datetime]


class PageHit(Base):
    """Requests to the customer pages, counted per day, page and method: GET and HEAD on a link
    whose answer only a POST records are the prefetches mail scanners make (the report)."""

    __tablename__ = "page_hits"
    __table_args__ = (UniqueConstraint("day", "page", "method"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    page: Mapped[str] = mapped_column(String(20))  # order | feedback | review | preferences ...
    method: Mapped[str] = mapped_column(String(10))  # GET | HEAD | POST
    hits: Mapped[int] = mapped_column(Integer, default=0)


class Return(Base):
    """One return (RMA) of an order: what comes back, why, and what the customer gets.

    `rma` is shown to the customer and printed on the parcel: random, never sequential.
    `effect_key` makes the request idempotent (page, operator, Shopify's return id).
    Status vocabulary: tasks/states.ReturnStatus. Money is in the order's currency.
    """

    __tablename__ = "returns"
    __table_args__ = (Index(None, "status"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    rma: Mapped[str] = mapped_column(String(20), unique=True)
    effect_key: Mapped[str] = mapped_column(String(200), unique=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    source: Mapped[str] = mapped_column(String(30))  # page | operator | shopify | cancellation
    external_id: Mapped[str | None] = mapped_column(String(64))  # Shopify's return id
    status: Mapped[str] = mapped_column(String(20))
    resolution: Mapped[str] = mapped_column(String(20))  # refund | exchange
    reason: Mapped[str] = mapped_column(String(40))  # a key of returns.yaml reasons
    comment: Mapped[str | None] = mapped_column(
        Text, info={"personal": "free_text", "erase": "redact"}
    )
    requested_at: Mapped[datetime]
    return_by: Mapped[date | None] = mapped_column(Date)  # the parcel must be sent by then
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(100))  # "policy" when auto-approved
    decision_note: Mapped[str | None] = mapped_column(
        Text, info={"personal": "free_text", "erase": "redact"}
    )
    label_url: Mapped[str | None] = mapped_column(String(1000))  # from an operator or carrier
    label_ref: Mapped[str | None] = mapped_column(String(500))  # an archived label PDF
    received_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    goods_value: Mapped[Decimal]  # what the returned units cost the customer (after discounts)
    restocking_fee: Mapped[Decimal]
    shipping_fee: Mapped[Decimal]  # charged when the customer pays the return shipping
    refund_amount: Mapped[Decimal | None]  # set when refunded (goods − fees)
    credit_amount: Mapped[Decimal | None]  # keep-with-credit
    replacement_order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime]

    lines: Mapped[list[ReturnLine]] = relationship(
        back_populates="ret", order_by="ReturnLine.id", cascade="all, delete-orphan"
    )


class ReturnLine(Base):
    """Units of one order line in a return; an exchange names the variant wanted instead."""

    __tablename__ = "return_lines"
    __table_args__ = (UniqueConstraint("return_id", "order_line_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    return_id: Mapped[int] = mapped_column(ForeignKey("returns.id", ondelete="CASCADE"))
    order_line_id: Mapped[int] = mapped_column(
        ForeignKey("order_lines.id", ondelete="CASCADE"), index=True
    )
    quantity: Mapped[int] = mapped_column(Integer)
    exchange_sku: Mapped[str | None] = mapped_column(String(100))

    ret: Mapped[Return] = relationship(back_populates="lines")


class CreditNote(Base):
    """A credit note: the correction of an invoice by a refund, with its own gapless number
    series (`number`, from `document_counters`). The invoice itself is never rewritten."""

    __tablename__ = "credit_notes"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    effect_key: Mapped[str] = mapped_column(String(200), unique=True)  # the refund's own key
    number: Mapped[str] = mapped_column(String(40), unique=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    return_id: Mapped[int | None] = mapped_column(ForeignKey("returns.id", ondelete="SET NULL"))
    invoice_number: Mapped[str] = mapped_column(String(64))  # the invoice it corrects
    currency: Mapped[str] = mapped_column(String(3))
    goods: Mapped[Decimal]
    shipping: Mapped[Decimal]
    fees: Mapped[Decimal]  # restocking and return shipping kept back
    total: Mapped[Decimal]  # refunded to the customer
    reason: Mapped[str] = mapped_column(String(200))
    lines: Mapped[list[dict[str, Any]]] = mapped_column(default=list)  # [{sku,title,qty,amount}]
    issued_at: Mapped[datetime]
    document_ref: Mapped[str | None] = mapped_column(String(500))  # archived HTML


class DocumentCounter(Base):
    """How many numbers a series (invoices, credit notes) has issued: incremented in the issuing
    transaction, so numbers are gapless and never reused (PostgreSQL: row lock)."""

    __tablename__ = "document_counters"

    series: Mapped[str] = mapped_column(String(40), primary_key=True)
    issued: Mapped[int] = mapped_column(Integer, default=0)  # numbers given out so far


class Invoice(Base):
    """An order's invoice: its number in the store's gapless series (`document_counters`,
    prefix `invoice_prefix` in configs/store.yaml), issued in the packing transaction that
    renders it, and the day of issue in the store's time zone as printed. Never renumbered
    or rewritten: a refund is a credit note that names this number."""

    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id: Mapped[int] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), unique=True
    )
    number: Mapped[str] = mapped_column(String(40), unique=True)
    issued_at: Mapped[datetime]
    issued_on: Mapped[date] = mapped_column(Date)
