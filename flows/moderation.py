"""Review moderation in the Prefect UI: pending product reviews in one typed form.

Like the hold review (flows/decisions.py): one run shows many reviews, each with a choice
(approve, reject, keep) and, to reject, a reason from configs/pages.yaml reviews.reject_reasons
— content rules only; the form offers nothing to reject a rating for. Anything left on *keep*,
or unanswered before the timeout, stays pending. Who decided and when is kept on each review.
The deciding itself is tasks/storefront/reviews.py (tested without Prefect).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput
from pydantic import BaseModel, Field, create_model

from flows.common import app_engine, runtime
from flows.decisions import (
    KEEP,
    Item,
    decision_form,
    items_markdown,
    operator_name,
    timeout_minutes,
    wait_for_decisions,
)
from flows.parameters import Request
from flows.reporting import mask_emails
from tasks.store.db import session_scope
from tasks.storefront.reviews import Decision, PendingReview, moderate, pending_reviews

TEXT_IN_FORM = 1500  # characters of a review shown in the form's description


class ModerationRequest(Request):
    """Ask an operator to approve or reject pending product reviews through a form."""

    limit: int = Field(25, ge=1, le=100, title="At most this many reviews in the form",
                       description="The oldest pending reviews first.")
    timeout_minutes: int | None = Field(None, ge=1, le=10_080, title="Wait at most (minutes)",
                                        description="Then every review stays pending. Empty: "
                                        "the Variable journeys_decision_timeout_minutes, else "
                                        "240.")


def review_choice(reject_reasons: list[str]) -> type[BaseModel]:
    """One review's choice; the reasons are the configured content rules, nothing else."""
    # No reasons configured: nothing can be rejected (a rejection without a rule is refused).
    reason_type = Literal[tuple(reject_reasons)] if reject_reasons else str  # type: ignore[valid-type]
    return create_model(
        "ReviewDecision",
        decision=(Literal["keep", "approve", "reject"], Field(KEEP, title="Decision", description=(
            "approve: publish it; reject: do not publish (choose a reason); keep: decide "
            "later. Never reject for a low rating."))),
        reason=(reason_type | None, Field(None, title="Reason to reject",
                                          description="Only with reject: which rule it breaks.")),
    )


def review_item(review: PendingReview) -> Item:
    stars = "★" * review.rating + "☆" * (5 - review.rating)
    text = " · ".join(part for part in (review.title, review.body) if part) or "(no text)"
    detail = mask_emails(f"{text[:TEXT_IN_FORM]} — by {review.display_name}")
    return Item(review.id, f"{stars} {review.rating}/5 · {review.product} ({review.sku})",
                detail, f"review_{review.id}")


def pending_items(limit: int) -> list[Item]:
    with session_scope(app_engine()) as session:
        return [review_item(r) for r in pending_reviews(session, limit)]


def decisions_of(items: list[Item], answer: RunInput) -> list[Decision]:
    return [Decision(item.id, getattr(answer, item.field).decision,
                     getattr(answer, item.field).reason) for item in items]


@flow(name="review-moderation", log_prints=True)
def moderate_reviews(request: ModerationRequest = ModerationRequest()) -> dict[str, Any]:  # noqa: B008
    """Show pending reviews in one form; approve or reject what the operator decides."""
    reasons = list(runtime().config.pages.reviews.reject_reasons)
    items, minutes = pending_items(request.limit), timeout_minutes(request.timeout_minutes)
    if not items:
        return {"reviews": 0}
    create_markdown_artifact(items_markdown("Reviews to moderate", items, minutes),
                             key="review-moderation", description="What the form below asks")
    intro = ("Decide each review: **approve** publishes it, **reject** needs a reason (content "
             f"rules only: {', '.join(reasons)}), **keep** leaves it pending. A low rating is "
             "never a reason to reject.")
    form = decision_form("ReviewModeration", items, review_choice(reasons), intro)
    answer = wait_for_decisions(form, minutes)
    now = datetime.now(UTC)  # a human decision happens on the real clock
    if answer is None:
        get_run_logger().warning("review moderation expired after %s minutes", minutes)
        return {"reviews": len(items), "expired": True}
    with session_scope(app_engine()) as session:
        outcome = moderate(session, decisions_of(items, answer), operator_name(answer), now,
                           reasons)
    if outcome["refused"]:
        get_run_logger().warning("decisions not taken: %s", outcome["refused"])
    return {"reviews": len(items), **outcome}
