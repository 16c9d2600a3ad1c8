"""Every state and status the journey stores, one `StrEnum` per column that holds one.

A member is its string: it compares equal to it, hashes like it and is stored as it, so the
database and every existing comparison see exactly the strings they always did. Import the enum
(`OrderState.SHIPPED`) rather than redefining a bare string: a `PENDING` alone does not say
whose pending it is (a step's, a message's, an inbox delivery's or a ledger entry's).
"""

from __future__ import annotations

from enum import StrEnum


class OrderState(StrEnum):
    """Order.state: where an order is in the journey (tasks/journey.py moves it)."""

    RECEIVED = "received"
    VERIFIED = "verified"
    PACKED = "packed"
    CONFIRMED = "confirmed"
    ON_HOLD = "on_hold"
    CANCELLED = "cancelled"
    SHIPPED = "shipped"
    DELIVERED = "delivered"


class StepStatus(StrEnum):
    """Step.status: a scheduled step waits (pending), ran (done), held its order, or closed."""

    PENDING = "pending"
    DONE = "done"
    HELD = "held"
    CLOSED = "closed"


class MessageStatus(StrEnum):
    """Message.status: the outbox row's life (tasks/messaging/outbox.py, governor, privacy)."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the transport may have delivered it: counts as sent for caps
    SKIPPED = "skipped"
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # stopped by erasure or an order cancellation


class InboxStatus(StrEnum):
    """InboxDelivery.status: a webhook delivery waiting, taken, refused or broken."""

    PENDING = "pending"
    PROCESSED = "processed"
    QUARANTINED = "quarantined"
    IGNORED = "ignored"
    FAILED = "failed"  # processing raised: kept with the error, for an engineer


class CaseStatus(StrEnum):
    """ServiceCase.status (tasks/aftercare/service.py)."""

    OPEN = "open"
    RESOLVED = "resolved"


class QuarantineStatus(StrEnum):
    """Quarantine.status: a refused record waits for an operator's release."""

    OPEN = "open"
    RELEASED = "released"


class LedgerStatus(StrEnum):
    """LoyaltyEntry.status: points earned but not yet spendable, or approved."""

    PENDING = "pending"
    APPROVED = "approved"


class ReviewStatus(StrEnum):
    """Review.status (tasks/storefront/reviews.py): moderation's outcome."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class ParcelStatus(StrEnum):
    """Shipment.status values the code decides on; the others are AfterShip tags as received."""

    INITIAL = "Pending"  # stored, no tracking event yet
    DELIVERED = "Delivered"
    # Cancelled or failed fulfillment: not an AfterShip tag, so no tracking event moves it again.
    CANCELLED = "Cancelled"


class ReturnStatus(StrEnum):
    """Return.status (tasks/returns/): a return's life from the customer's request to its end.

    requested → approved (auto or operator) → received → refunded | exchanged; or
    requested → rejected | kept_with_credit (the customer keeps the goods, gets a credit).
    `label_url` may be set on an approved return at any time (operator or carrier webhook)."""

    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    KEPT_WITH_CREDIT = "kept_with_credit"
    RECEIVED = "received"
    REFUNDED = "refunded"
    EXCHANGED = "exchanged"


OPEN_RETURN_STATUSES = (ReturnStatus.REQUESTED, ReturnStatus.APPROVED, ReturnStatus.RECEIVED)
