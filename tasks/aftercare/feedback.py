"""Delivery feedback: a survey mail to every delivered customer whose rating buttons open our
survey page (/f/{token}); answers from that page or from files stored once; unhappy answers
routed to service recovery (a ServiceCase with a proposed resolution).

This is a service survey, not a review request: it may go to everyone and may route unhappy
answers to an operator (16 CFR Part 465 concerns reviews, see reviews.py).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tasks.aftercare import aftercare_config, close_missing
from tasks.config import Config
from tasks.config.aftercare import AftercareConfig, FeedbackRules
from tasks.i18n import N_
from tasks.intake.formats import IntakeError, validation_reasons
from tasks.intake.ingest import IntakeResult, quarantine_records
from tasks.intake.schema import INT_MAX, Rejected, refuse_nul
from tasks.journey import StageResult
from tasks.links import Purpose, link_url
from tasks.messaging.compose import base_context, order_mail
from tasks.messaging.outbox import enqueue
from tasks.runtime import Runtime
from tasks.store.journal import finish_steps, insert_ignoring_duplicates, record_events
from tasks.store.loaders import delivered_orders
from tasks.store.models import FeedbackResponse, Order, ServiceCase

STEP = TEMPLATE = "feedback_request"
KIND = "feedback"
RATINGS = range(1, 6)
# Marked: the survey page words them in the reader's language.
RATING_LABELS = {1: N_("Very poor"), 2: N_("Poor"), 3: N_("OK"), 4: N_("Good"),
                 5: N_("Excellent")}
Tag = Literal["damaged", "wrong_item", "missing_item", "late", "other"]


# ---------------------------------------------------------------- links
# The mail links each rating to our survey page, `/f/{token}?r=N` (tasks/links.py; the page
# records nothing until the customer sends its form). The signed `/feedback?o=&r=&sig=` links
# below are what earlier mails carried: the page still opens them, and feedback files may
# still carry their signatures.


def survey_links(base_url: str, secret_key: str, order_id: int,
                 now: datetime) -> list[dict[str, Any]]:
    """The five rating buttons of the survey mail: one token, the rating in the query."""
    url = link_url(base_url, secret_key, Purpose.FEEDBACK, order_id, now)
    return [{"rating": r, "label": RATING_LABELS[r], "url": f"{url}?r={r}"} for r in RATINGS]


def rating_signature(secret_key: str, order_id: int, rating: int) -> str:
    """HMAC-SHA256 over the order id and the rating, hex (unguessable without the secret)."""
    message = f"feedback:{order_id}:{rating}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def verify_rating_link(secret_key: str, order_id: int, rating: int, sig: str | None) -> bool:
    """Whether `sig` is ours for this order and rating (constant-time comparison)."""
    if not sig or rating not in RATINGS:
        return False
    return hmac.compare_digest(rating_signature(secret_key, order_id, rating), str(sig))


def rating_link(base_url: str, secret_key: str, order_id: int, rating: int) -> str:
    query = urlencode({"o": order_id, "r": rating,
                       "sig": rating_signature(secret_key, order_id, rating)})
    return f"{base_url.rstrip('/')}/feedback?{query}"


# ---------------------------------------------------------------- the survey stage


def feedback_request(
    session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
) -> StageResult:
    """Queue the survey mail for every delivered order of the batch (transactional)."""
    orders = delivered_orders(session, order_ids)
    cfg, secret = rt.config, rt.settings.secret_key
    enqueue(session, [survey_message(o, cfg, secret, now) for o in orders], now)
    finish_steps(session, STEP, {o.id: None for o in orders}, now)
    closed = close_missing(session, STEP, order_ids, [o.id for o in orders], now)
    return StageResult(stage=STEP, advanced=len(orders), closed=closed,
                       details={"messages_enqueued": len(orders)})


def survey_message(order: Order, cfg: Config, secret: str, now: datetime) -> dict[str, Any]:
    context = base_context(order, cfg)
    context["feedback"] = {
        "links": survey_links(cfg.store.links_base_url, secret, order.id, now)}
    return order_mail(cfg, order, STEP, TEMPLATE, context, now, topic=None)


# ---------------------------------------------------------------- reading answers


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("submitted_at needs a time zone offset")
    return value


class FeedbackIn(BaseModel):
    """One survey answer as received (JSON Lines)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    order_id: int | None = Field(default=None, ge=1, le=INT_MAX)  # our orders.id column
    sig: str | None = Field(default=None, max_length=128)
    order_external_id: str | None = Field(default=None, max_length=64)
    source: str | None = Field(default=None, max_length=20)
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=5000)
    tags: list[Tag] = Field(default_factory=list)
    submitted_at: Annotated[datetime, AfterValidator(_aware)]

    @field_validator("sig", "order_external_id", "source", "comment", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return refuse_nul(value)  # PostgreSQL text cannot hold NUL characters

    @model_validator(mode="after")
    def _identifies_order(self) -> FeedbackIn:
        if self.order_id is None and not self.order_external_id:
            raise ValueError("order_id with sig, or order_external_id, is required")
        return self


@dataclass(frozen=True)
class FeedbackItem:
    """A valid answer with where it came from (kept to quarantine it whole if needed)."""

    record: FeedbackIn
    raw: str
    origin: str


def read_feedback(path: Path | str) -> list[FeedbackItem | Rejected]:
    """Parse a JSON Lines file; a line that is not a valid answer becomes a Rejected record."""
    path = Path(path)
    if not path.is_file():
        raise IntakeError(f"{path}: no such file")
    items: list[FeedbackItem | Rejected] = []
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    # Lines end at \n, \r or \r\n as in the other readers; str.splitlines() would also split
    # at U+2028, U+0085 or a form feed, which JSON may hold inside a customer's comment.
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        if line.strip():
            items.append(parse_feedback_line(line.strip(), f"{path.name}:line {number}"))
    return items


def parse_feedback_line(raw: str, origin: str) -> FeedbackItem | Rejected:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return _rejected(raw, origin, "_record", f"not valid JSON: {exc}")
    if not isinstance(data, dict):
        return _rejected(raw, origin, "_record", "expected a JSON object")
    try:
        return FeedbackItem(FeedbackIn.model_validate(data), raw, origin)
    except ValidationError as exc:
        return Rejected(KIND, KIND, raw, validation_reasons(exc), origin, _external(data))


def _external(data: dict[str, Any]) -> str | None:
    value = data.get("order_external_id") or data.get("order_id")
    return str(value)[:64] if value is not None else None


def _rejected(raw: str, origin: str, field: str, reason: str, ext: str | None = None) -> Rejected:
    return Rejected(KIND, KIND, raw, [{"field": field, "reason": reason}], origin, ext)


# ---------------------------------------------------------------- ingesting answers


def ingest_feedback(
    session: Session, items: Iterable[FeedbackItem | Rejected], now: datetime, rt: Runtime
) -> IntakeResult:
    """Store answers once (source_key), quarantine bad or forged ones, open cases for issues."""
    items = list(items)
    result = IntakeResult(received=len(items))
    rejected = [item for item in items if isinstance(item, Rejected)]
    valid = [item for item in items if isinstance(item, FeedbackItem)]
    orders = resolve_orders(session, [item.record for item in valid])
    accepted: list[tuple[FeedbackItem, Order]] = []
    for item in valid:
        order = orders.get(_lookup_key(item.record))
        problem = authenticity_problem(item.record, order, rt.settings.secret_key)
        if problem:
            rejected.append(_rejected(item.raw, item.origin, *problem, _external(
                item.record.model_dump())))
        else:
            accepted.append((item, order))  # type: ignore[arg-type]
    new_rows, duplicates = store_answers(session, accepted, now)
    open_feedback_cases(session, new_rows, now, aftercare_config(rt.config))
    new, known = quarantine_records(session, rejected, now)
    result.accepted, result.duplicates = len(new_rows), duplicates + known
    result.quarantined = new
    return result


def _lookup_key(record: FeedbackIn) -> tuple[str, str]:
    if record.order_id is not None:
        return ("id", str(record.order_id))
    return ("external", f"{record.source or ''}|{record.order_external_id}")


def resolve_orders(
    session: Session, records: Sequence[FeedbackIn]
) -> dict[tuple[str, str], Order]:
    """The orders the answers name, by internal id or by (source?, external id): one query."""
    ids = {r.order_id for r in records if r.order_id is not None}
    externals = {r.order_external_id for r in records if r.order_id is None}
    if not ids and not externals:
        return {}
    query = select(Order).where(or_(Order.id.in_(ids), Order.external_id.in_(externals)))
    found: dict[tuple[str, str], Order] = {}
    for order in session.scalars(query):
        found[("id", str(order.id))] = order
        found.setdefault(("external", f"|{order.external_id}"), order)
        found[("external", f"{order.source}|{order.external_id}")] = order
    return found


def authenticity_problem(
    record: FeedbackIn, order: Order | None, secret: str
) -> tuple[str, str] | None:
    """(field, reason) when the answer cannot be trusted or attributed, else None."""
    if order is None:
        field = "order_id" if record.order_id is not None else "order_external_id"
        return field, "unknown order"
    if record.order_id is not None:
        if not record.sig:
            return "sig", "unsigned: a survey answer by order_id needs the link's signature"
        if not verify_rating_link(secret, order.id, record.rating, record.sig):
            return "sig", "forged or altered: signature does not match order and rating"
    if order.delivered_at is None:
        return "order_id", "order not delivered yet"
    return None


def source_key(order_id: int, record: FeedbackIn) -> str:
    """One answer per order and submission time: re-reading a file adds nothing."""
    return f"feedback:{order_id}:{record.submitted_at.isoformat()}"


def store_answers(
    session: Session, accepted: Sequence[tuple[FeedbackItem, Order]], now: datetime
) -> tuple[list[dict[str, Any]], int]:
    """Insert answers not yet known; returns the new rows and how many were duplicates."""
    rows = {source_key(o.id, i.record): _answer_row(o, i.record, now) for i, o in accepted}
    if not rows:
        return [], 0
    query = select(FeedbackResponse.source_key).where(FeedbackResponse.source_key.in_(rows))
    known = set(session.scalars(query))
    new = [row for key, row in rows.items() if key not in known]
    insert_ignoring_duplicates(session, FeedbackResponse, new, ["source_key"])
    return new, len(accepted) - len(new)


def _answer_row(order: Order, record: FeedbackIn, now: datetime) -> dict[str, Any]:
    return {"source_key": source_key(order.id, record), "order_id": order.id,
            "rating": record.rating, "comment": record.comment,
            "tags": sorted(set(record.tags)), "received_at": now}


# ---------------------------------------------------------------- routing to service recovery


def case_key(order_id: int) -> str:
    return f"order:{order_id}:case:feedback"


def proposal(rating: int, tags: Sequence[str], rules: FeedbackRules) -> str | None:
    """The resolution to propose for an answer, or None when it needs no case."""
    for tag, resolution in rules.proposals.items():
        if tag in tags:
            return resolution
    return rules.low_rating_proposal if rating <= rules.low_rating_threshold else None


def open_feedback_cases(
    session: Session, answers: Sequence[dict[str, Any]], now: datetime, cfg: AftercareConfig
) -> int:
    """Open one feedback case per order whose answer is unhappy; existing cases are kept."""
    wanted: dict[str, dict[str, Any]] = {}
    for answer in answers:
        proposed = proposal(answer["rating"], answer["tags"], cfg.feedback)
        if proposed and case_key(answer["order_id"]) not in wanted:
            wanted[case_key(answer["order_id"])] = _case_row(answer, proposed, now)
    if not wanted:
        return 0
    query = select(ServiceCase.effect_key).where(ServiceCase.effect_key.in_(wanted))
    known = set(session.scalars(query))
    rows = [row for key, row in wanted.items() if key not in known]
    insert_ignoring_duplicates(session, ServiceCase, rows, ["effect_key"])
    record_events(session, [_case_event(row, now) for row in rows])
    return len(rows)


def _case_row(answer: dict[str, Any], proposed: str, now: datetime) -> dict[str, Any]:
    reason = f"feedback rating {answer['rating']}"
    if answer["tags"]:
        reason += f"; issues: {', '.join(answer['tags'])}"
    return {"effect_key": case_key(answer["order_id"]), "order_id": answer["order_id"],
            "reason": reason[:200], "proposed": proposed, "status": "open", "opened_at": now}


def _case_event(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {"order_id": row["order_id"], "at": now, "kind": "case_opened", "from_state": None,
            "to_state": None, "actor": "journeys",
            "detail": {"reason": row["reason"], "proposed": row["proposed"]}}
