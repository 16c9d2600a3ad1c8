"""Webhook signatures and delivery identities, as Shopify and AfterShip document them.

Both sign the raw body: base64(HMAC-SHA256(body, secret)). The check runs on the exact bytes
received, before anything parses them (re-serialised JSON would change the bytes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from tasks.deliveries import Delivery


def signature(body: bytes, secret: str) -> str:
    """The base64 HMAC-SHA256 of `body` under `secret`, as the providers send it."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def signed_by_any(body: bytes, given: str | None, secrets: Iterable[str | None]) -> bool:
    """True if `given` is the body's signature under one of the configured secrets."""
    if not given:
        return False
    return any(hmac.compare_digest(signature(body, secret).encode(), given.strip().encode())
               for secret in secrets if secret)


def body_digest(body: bytes) -> str:
    """A stand-in delivery id when the sender gave none: the same body is the same delivery."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _instant(value: str | None) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def shopify_delivery(body: bytes, headers: Mapping[str, str]) -> Delivery:
    """Shopify's identity headers: X-Shopify-Webhook-Id is unique per delivery (dedupe on it);
    X-Shopify-Event-Id is shared by every subscription one merchant action feeds (kept apart)."""
    return Delivery(
        provider="shopify", topic=headers.get("x-shopify-topic", "").strip(),
        delivery_id=headers.get("x-shopify-webhook-id") or body_digest(body), body=body,
        event_id=headers.get("x-shopify-event-id"),
        triggered_at=_instant(headers.get("x-shopify-triggered-at")),
        shop=headers.get("x-shopify-shop-domain"),
    )


def aftership_delivery(body: bytes) -> Delivery:
    """AfterShip names the delivery in the (signed) body: `event_id`, and the kind in `event`."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    data = data if isinstance(data, dict) else {}
    event_id = data.get("event_id")
    event_id = str(event_id) if event_id not in (None, "") else None
    ts = data.get("ts")
    triggered = (datetime.fromtimestamp(ts, tz=UTC)
                 if isinstance(ts, int) and 0 < ts < 32503680000 else None)
    return Delivery(provider="aftership", topic=str(data.get("event") or "tracking_update"),
                    delivery_id=event_id or body_digest(body), body=body, event_id=event_id,
                    triggered_at=triggered)
