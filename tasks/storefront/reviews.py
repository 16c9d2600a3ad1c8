"""Product reviews: what /r/{token} shows and records, moderation, and the exports.

One review per order line (effect key `review:<order line id>`). A customer may rewrite it
while it waits for moderation; once an operator approved or rejected it, it stays as decided.
Moderation rejects only for a content rule (configs/pages.yaml reviews.reject_reasons) and
never looks at the rating: every honest review is published, whatever it says (US FTC
16 CFR Part 465; Google's review policy). No Prefect, no FastAPI, no clock: `now` is passed in.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tasks.config import Config
from tasks.i18n import N_
from tasks.states import ReviewStatus
from tasks.store.journal import insert_new
from tasks.store.models import Customer, Order, OrderLine, Product, Review
from tasks.storefront.words import Say

PENDING, APPROVED, REJECTED = ReviewStatus.PENDING, ReviewStatus.APPROVED, ReviewStatus.REJECTED
APPROVE, REJECT, KEEP = "approve", "reject", "keep"
STARS = (1, 2, 3, 4, 5)
TITLE_CHARS = 200
NAME_CHARS = 100
GOOGLE_FEED_VERSION = "2.4"  # Google's product review feed schema (product_reviews.xsd)


def effect_key(line_id: int) -> str:
    return f"review:{line_id}"


# ------------------------------------------------------------------ names


def product_name(line: OrderLine, catalog_title: str | None) -> str:
    """The product, not the variant ("Linen shirt", not "Linen shirt - Blue / M") where that is
    easy: a Shopify catalog title is "product - variant" and the line knows the variant."""
    title = catalog_title or line.title
    variant = line.variant_title
    if variant and title.endswith(f" - {variant}"):
        return title[: -len(variant) - 3]
    return title


def product_slug(product: Product | None, name: str, sku: str) -> str:
    """The product's handle where the catalog has one, else one made from its name the way
    Shopify makes handles, else the SKU (for a review platform's product URL)."""
    handle = (product.attributes or {}).get("handle") if product else None
    if isinstance(handle, str) and handle.strip():
        return handle.strip()
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug or sku


def default_display_name(customer: Customer | None, say: Say) -> str:
    """First name and last initial ("Ada L."): recognisable to friends, not to strangers."""
    first = (customer.first_name or "").strip() if customer else ""
    last = (customer.last_name or "").strip() if customer else ""
    if not first:
        return say(N_("Verified buyer"))
    return f"{first} {last[0].upper()}." if last else first


# ------------------------------------------------------------------ the page


@dataclass(frozen=True)
class Draft:
    """A review as the customer sent it, already cleaned (control characters dropped)."""

    rating: int
    title: str | None
    body: str | None
    display_name: str


def check_draft(rating: str | None, title: str | None, body: str | None,
                display_name: str | None, max_chars: int, say: Say
                ) -> tuple[Draft | None, list[str]]:
    """The draft, or the problems to show next to the form in the customer's language
    (nothing is cut silently)."""
    problems = []
    stars = int(rating) if rating and rating.strip().isdigit() else 0
    if stars not in STARS:
        problems.append(say(N_("Please choose from 1 to 5 stars.")))
    if title and len(title) > TITLE_CHARS:
        problems.append(say(N_("Please keep the title under %(count)s characters."),
                            count=TITLE_CHARS))
    if body and len(body) > max_chars:
        problems.append(say(N_("Please keep your review under %(count)s characters (it has "
                               "%(length)s)."), count=max_chars, length=len(body)))
    if not display_name:
        problems.append(say(N_("Please tell us the name to show with your review.")))
    elif len(display_name) > NAME_CHARS:
        problems.append(say(N_("Please keep the name under %(count)s characters."),
                            count=NAME_CHARS))
    if problems:
        return None, problems
    return Draft(stars, title, body, display_name or ""), []


def line_of(session: Session, order: Order, line_id: int) -> OrderLine | None:
    """The order line a link names, if it belongs to that order and has a product to review."""
    line = session.get(OrderLine, line_id)
    if line is None or line.order_id != order.id or not line.sku or line.gift_card:
        return None
    return line


def review_of(session: Session, line_id: int) -> Review | None:
    return session.scalars(select(Review).where(Review.effect_key == effect_key(line_id))).first()


def submit(session: Session, order: Order, line: OrderLine, draft: Draft, now: datetime) -> str:
    """Store the review, or replace it while it is still pending. Returns "stored", "same"
    (an identical POST again: nothing changes) or the status it already has ("approved",
    "rejected": a decided review is never changed by the page)."""
    key = effect_key(line.id)
    fields = {"rating": draft.rating, "title": draft.title, "body": draft.body,
              "display_name": draft.display_name}
    row = {"effect_key": key, "order_id": order.id, "order_line_id": line.id,
           "sku": line.sku, "verified_buyer": True, "status": PENDING, "submitted_at": now,
           "updated_at": now, **fields}
    if insert_new(session, Review, [row], "effect_key"):
        return "stored"
    existing = review_of(session, line.id)
    if existing is None:  # pragma: no cover - the row was erased between the two statements
        return "same"
    if existing.status != PENDING:
        return existing.status
    if all(getattr(existing, name) == value for name, value in fields.items()):
        return "same"
    # Compare-and-set: an operator's decision taken meanwhile wins over the rewrite.
    changed = session.execute(update(Review).where(Review.id == existing.id,
                                                   Review.status == PENDING)
                              .values(**fields, submitted_at=now, updated_at=now)).rowcount
    session.expire(existing)
    return "stored" if changed else review_of(session, line.id).status  # type: ignore[union-attr]


# ------------------------------------------------------------------ moderation


@dataclass(frozen=True)
class PendingReview:
    """What an operator sees to decide one review (no order id, no address)."""

    id: int
    product: str
    sku: str
    rating: int
    title: str | None
    body: str | None
    display_name: str
    submitted_at: datetime


def pending_reviews(session: Session, limit: int = 50) -> list[PendingReview]:
    """The oldest pending reviews first (a customer waits for theirs to appear)."""
    query = (select(Review, OrderLine, Product.title)
             .join(OrderLine, OrderLine.id == Review.order_line_id)
             .outerjoin(Product, Product.sku == Review.sku)
             .where(Review.status == PENDING)
             .order_by(Review.submitted_at, Review.id).limit(limit))
    return [PendingReview(r.id, product_name(line, title), r.sku, r.rating, r.title, r.body,
                          r.display_name, r.submitted_at)
            for r, line, title in session.execute(query)]


@dataclass(frozen=True)
class Decision:
    review_id: int
    decision: str  # approve | reject | keep
    reason: str | None = None  # required to reject: one of the configured content rules


def refusal(decision: Decision, reject_reasons: Sequence[str]) -> str | None:
    """Why a decision cannot be taken: a rejection needs a content reason from the list (the
    form offers nothing about the rating to reject for)."""
    if decision.decision not in (APPROVE, REJECT, KEEP):
        return f"review {decision.review_id}: unknown decision {decision.decision!r}"
    if decision.decision == REJECT and decision.reason not in reject_reasons:
        return (f"review {decision.review_id}: not rejected, a rejection needs a reason "
                f"({', '.join(reject_reasons)}); it stays pending")
    return None


def moderate(session: Session, decisions: Sequence[Decision], operator: str, now: datetime,
             reject_reasons: Sequence[str]) -> dict[str, Any]:
    """Approve or reject pending reviews, recording who and when. A review already decided
    (by another operator, in another run) is left as it is; a decision that breaks the rules
    is not taken and is listed under "refused"."""
    counts: dict[str, Any] = {APPROVE: 0, REJECT: 0, KEEP: 0, "already_decided": 0,
                              "refused": []}
    who = " ".join(operator.split())[:NAME_CHARS] or "operator"
    for d in decisions:
        why = refusal(d, reject_reasons)
        if why:
            counts["refused"].append(why)
            continue
        if d.decision == KEEP:
            counts[KEEP] += 1
            continue
        status, reason = (APPROVED, None) if d.decision == APPROVE else (REJECTED, d.reason)
        done = session.execute(update(Review).where(Review.id == d.review_id,
                                                    Review.status == PENDING)
                               .values(status=status, reject_reason=reason, moderated_by=who,
                                       moderated_at=now, updated_at=now)).rowcount
        counts[d.decision if done else "already_decided"] += 1
    return counts


# ------------------------------------------------------------------ report and exports


def approved_by_rating(session: Session) -> dict[str, int]:
    """Approved reviews per star (1-5, all shown): with the request rates by survey rating,
    it shows that publication does not depend on what customers said."""
    counts = {stars: n for stars, n in session.execute(
        select(Review.rating, func.count()).where(Review.status == APPROVED)
        .group_by(Review.rating))}
    return {str(stars): counts.get(stars, 0) for stars in STARS}


@dataclass(frozen=True)
class Published:
    """One approved review as exported (nothing that names the buyer beyond the display name)."""

    review_id: str
    sku: str
    product: str
    product_url: str
    rating: int
    title: str | None
    content: str | None
    reviewer: str
    verified_buyer: bool
    written_at: str
    approved_at: str | None


def approved_reviews(session: Session, cfg: Config) -> list[Published]:
    query = (select(Review, OrderLine, Product)
             .join(OrderLine, OrderLine.id == Review.order_line_id)
             .outerjoin(Product, Product.sku == Review.sku)
             .where(Review.status == APPROVED).order_by(Review.id))
    website = cfg.store.website.rstrip("/")
    rows = []
    for review, line, product in session.execute(query):
        name = product_name(line, product.title if product else None)
        rows.append(Published(
            review_id=f"r{review.id}", sku=review.sku, product=name,
            product_url=f"{website}/products/{product_slug(product, name, review.sku)}",
            rating=review.rating, title=review.title, content=review.body,
            reviewer=review.display_name, verified_buyer=review.verified_buyer,
            written_at=_instant(review.submitted_at),
            approved_at=_instant(review.moderated_at) if review.moderated_at else None))
    return rows


def _instant(at: datetime) -> str:
    """ISO 8601 in UTC with a Z (SQLite hands back naive datetimes, stored as UTC)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def google_feed(reviews: Sequence[Published], publisher: str, favicon: str | None = None
                ) -> bytes:
    """Google's product review feed (schema 2.4), elements in the schema's order. Google
    replaces its copy with each full feed, so this is always every approved review."""
    feed = ET.Element("feed", {
        "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
        "xsi:noNamespaceSchemaLocation":
            "http://www.google.com/shopping/reviews/schema/product/2.4/product_reviews.xsd"})
    ET.SubElement(feed, "version").text = GOOGLE_FEED_VERSION
    owner = ET.SubElement(feed, "publisher")
    ET.SubElement(owner, "name").text = publisher
    if favicon:
        ET.SubElement(owner, "favicon").text = favicon
    container = ET.SubElement(feed, "reviews") if reviews else None  # no empty <reviews/>
    for r in reviews:
        review = ET.SubElement(container, "review")  # type: ignore[arg-type]
        ET.SubElement(review, "review_id").text = r.review_id
        reviewer = ET.SubElement(review, "reviewer")
        ET.SubElement(reviewer, "name").text = r.reviewer
        ET.SubElement(review, "review_timestamp").text = r.written_at
        if r.title:
            ET.SubElement(review, "title").text = r.title
        ET.SubElement(review, "content").text = r.content or ""
        # The store's product page shows its reviews: a "group" page in Google's terms.
        ET.SubElement(review, "review_url", {"type": "group"}).text = r.product_url
        ratings = ET.SubElement(review, "ratings")
        ET.SubElement(ratings, "overall", {"min": "1", "max": "5"}).text = str(r.rating)
        product = ET.SubElement(ET.SubElement(review, "products"), "product")
        skus = ET.SubElement(ET.SubElement(product, "product_ids"), "skus")
        ET.SubElement(skus, "sku").text = r.sku
        ET.SubElement(product, "product_name").text = r.product
        ET.SubElement(product, "product_url").text = r.product_url
        ET.SubElement(review, "is_spam").text = "false"
        ET.SubElement(review, "collection_method").text = "post_fulfillment"
    ET.indent(feed)
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True) + b"\n"


def as_json(reviews: Sequence[Published]) -> str:
    return json.dumps([asdict(r) for r in reviews], ensure_ascii=False, indent=2) + "\n"


def as_csv(reviews: Sequence[Published]) -> str:
    out = io.StringIO()
    names = list(Published.__dataclass_fields__)
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in reviews:
        writer.writerow({k: _csv_cell(v) for k, v in asdict(r).items()})
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    """Customer text opened in a spreadsheet must not run as a formula (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


EXPORTS: Mapping[str, str] = {"google": "xml", "json": "json", "csv": "csv"}
