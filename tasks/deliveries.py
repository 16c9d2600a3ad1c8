"""A webhook delivery, and what a topic action is handed and gives back.

The vocabulary the edge's receivers (tasks/webhooks.py, tasks/sns.py, tasks/shopify_admin.py),
the inbox (tasks/inbox.py) and the topic actions (tasks/lifecycle.py, tasks/privacy_requests.py,
tasks/messaging/bounces.py) share. It lives apart from the inbox so that an action can import it
without importing the drain that calls the action (an import circle).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

# A delivery that refers to something not here yet (a fulfillment before its order is
# confirmed, a tracking event before its parcel) waits this long, then goes to intake anyway.
WAIT_LIMIT = timedelta(days=3)


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery as the edge received it; `body` is the exact bytes that were signed."""

    provider: str
    topic: str
    delivery_id: str
    body: bytes
    event_id: str | None = None
    triggered_at: datetime | None = None
    shop: str | None = None


@dataclass(frozen=True)
class Body:
    """A delivery's parsed body, handed to a topic action."""

    row_id: int
    topic: str
    data: dict[str, Any]
    received_at: datetime
    shop: str | None = None


Outcome = tuple[str, str | None]
