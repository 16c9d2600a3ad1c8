"""The delivery survey answered on our own page (/f/{token}): what the page shows and records.

The survey mail links each rating to `/f/{token}?r=N`; opening a link records nothing (mail
scanners open every link), only the form's POST does. A page answer is a `FeedbackResponse`
like one read from a feedback file, and an unhappy one opens the same service case
(tasks/aftercare/feedback.py `open_feedback_cases`, one case per order, idempotent).

One page answer per order (`answer_key`): the survey mail goes once per order, and its link is
the same in every re-rendered copy. A later answer within `survey_change_minutes` of the first
replaces it (a customer who clicked 5 and then noticed the broken mug); after that it stands.

No FastAPI, no clock here: the page passes `now` in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.aftercare import ISSUE_TAGS, aftercare_config
from tasks.aftercare.feedback import RATINGS, case_key, open_feedback_cases
from tasks.config import Config
from tasks.i18n import N_
from tasks.store.journal import insert_new
from tasks.store.models import FeedbackResponse, PageHit, ServiceCase

PAGE = "feedback"  # the page_hits name of /f/ (and of the old /feedback links)
KEY_PREFIX = "page:feedback:"
DELIVERY, FIT = "delivery", "fit"  # the surveys (the fit survey: tasks/aftercare/fit.py)
ISSUE_LABELS = {  # the page words them in the reader's language
    "damaged": N_("Something arrived damaged"),
    "wrong_item": N_("I received a wrong item"),
    "missing_item": N_("An item is missing"),
    "late": N_("It arrived late"),
    "other": N_("Something else"),
}

# What the outcomes mean for the page.
RECORDED, CHANGED, UNCHANGED, LOCKED = "recorded", "changed", "unchanged", "locked"


@dataclass(frozen=True)
class Answer:
    """A survey answer as the form sent it (already validated by the page).

    The delivery survey sends a rating and issue tags; the fit survey (topic "fit",
    tasks/aftercare/fit.py) no rating and its choice as the one tag."""

    rating: int | None
    comment: str | None = None
    tags: list[str] = field(default_factory=list)
    topic: str = DELIVERY


@dataclass(frozen=True)
class Outcome:
    status: str  # recorded | changed | unchanged | locked
    case: bool  # the order has a feedback case (opened now or by an earlier answer)


def parse_rating(value: Any) -> int | None:
    """A rating 1..5 from a query or form value; None for anything else (shown unselected)."""
    text = str(value).strip() if value is not None else ""
    return int(text) if text in {str(r) for r in RATINGS} else None


def chosen_tags(form: Mapping[str, str]) -> list[str]:
    """The issue boxes ticked (`issue_<tag>` fields; unknown names are ignored)."""
    return [tag for tag in ISSUE_TAGS if form.get(f"issue_{tag}")]


def answer_key(order_id: int, topic: str = DELIVERY) -> str:
    """One page answer per order and survey (the delivery survey's key predates topics)."""
    return f"{KEY_PREFIX}{order_id}" if topic == DELIVERY else f"page:{topic}:{order_id}"


def page_answer(session: Session, order_id: int, topic: str = DELIVERY
                ) -> FeedbackResponse | None:
    return session.scalar(select(FeedbackResponse).where(
        FeedbackResponse.source_key == answer_key(order_id, topic)))


def may_change(answer: FeedbackResponse, now: datetime, change_minutes: int) -> bool:
    """Whether a new submission may still replace this answer."""
    return now - answer.received_at <= timedelta(minutes=change_minutes)


def has_case(session: Session, order_id: int) -> bool:
    return session.scalar(select(ServiceCase.id).where(
        ServiceCase.effect_key == case_key(order_id))) is not None


def record_answer(session: Session, order_id: int, answer: Answer, now: datetime,
                  cfg: Config) -> Outcome:
    """Store the page's answer once per order; replace it within the change window.

    Race-safe: the insert skips a row another request stored a moment earlier, and that
    request's row is then treated as the first answer. The case path is the feedback file's
    (`open_feedback_cases`): its effect key keeps it to one case per order.
    """
    row = {"source_key": answer_key(order_id, answer.topic), "order_id": order_id,
           "topic": answer.topic, "rating": answer.rating, "comment": answer.comment,
           "tags": sorted(set(answer.tags)), "received_at": now}
    if insert_new(session, FeedbackResponse, [row], "source_key"):
        status = RECORDED
    else:
        status = _replace(session, order_id, row, now, cfg.pages.survey_change_minutes)
        if status == LOCKED:
            return Outcome(LOCKED, False)
    if answer.topic == DELIVERY:  # a size that does not fit is no failure of ours: no case
        open_feedback_cases(session, [row], now, aftercare_config(cfg))
    return Outcome(status, has_case(session, order_id))


def _replace(session: Session, order_id: int, row: dict[str, Any], now: datetime,
             change_minutes: int) -> str:
    stored = page_answer(session, order_id, row["topic"])
    if stored is None or not may_change(stored, now, change_minutes):
        return LOCKED
    new = (row["rating"], row["comment"], row["tags"])
    if (stored.rating, stored.comment, sorted(stored.tags or [])) == new:
        return UNCHANGED  # the same form sent twice changes nothing
    # received_at stays the first answer's: the change window does not restart.
    stored.rating, stored.comment, stored.tags = new
    session.flush()
    return CHANGED


# ---------------------------------------------------------------- the report


def survey_page_counts(session: Session) -> dict[str, int]:
    """Answers received through the page, and how often its links were opened.

    `page_hits` counts requests per day and method, not per visitor, so the prefetches (opens
    that never led to an answer: mostly mail scanners and link previews) are GET + HEAD
    beyond the POSTs.
    """
    answers = session.scalar(select(func.count()).select_from(FeedbackResponse).where(
        FeedbackResponse.source_key.startswith(KEY_PREFIX))) or 0
    hits = dict(session.execute(
        select(PageHit.method, func.sum(PageHit.hits)).where(PageHit.page == PAGE)
        .group_by(PageHit.method)).all())
    get, head, post = (int(hits.get(method) or 0) for method in ("GET", "HEAD", "POST"))
    return {"answers via page": int(answers), "opened (GET)": get, "HEAD": head,
            "submitted (POST)": post, "prefetches": max(0, get + head - post)}


def fit_answers(session: Session) -> dict[str, int]:
    """The fit survey's answers by choice ("just_right": 12, ...), most frequent first."""
    rows = session.execute(select(FeedbackResponse.tags).where(FeedbackResponse.topic == FIT))
    counts: Counter[str] = Counter(tag for (tags,) in rows for tag in tags or [])
    return dict(counts.most_common())
