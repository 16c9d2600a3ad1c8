"""What each deployable flow takes: one pydantic model per unit of work.

Prefect turns these into the run forms in its UI (titles, descriptions, choices, bounds) and,
with `enforce_parameter_schema`, refuses a run whose parameters do not fit before it starts.
Engineers pass the same models (or plain dicts) from code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AsOf = Annotated[datetime | None, Field(
    title="Business clock",
    description="The instant every stage sees (ISO 8601 with a zone). Empty: now.",
)]
BatchSize = Annotated[int | None, Field(
    title="Batch size", ge=1, le=100_000,
    description="Orders per task run. Empty: the Variable journeys_batch_size, else 1000.",
)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SweepRequest(Request):
    """Advance every due order (intake through confirmation and every timed step); send mail."""

    as_of: AsOf = None
    batch_size: BatchSize = None
    shard: int = Field(0, ge=0, title="Shard", description="Which shard of the orders to take "
                       "(order id modulo shards). Set by the daily run when it fans out.")
    shards: int = Field(1, ge=1, le=64, title="Shards", description="How many shards in all; "
                        "1 takes every order.")

    @model_validator(mode="after")
    def _shard_in_range(self) -> SweepRequest:
        if self.shard >= self.shards:
            raise ValueError(f"shard {self.shard} is not below shards {self.shards}")
        return self


class DailyRequest(Request):
    """The daily run: late-parcel watch, birthday offers, loyalty tiers, then a full sweep."""

    as_of: Annotated[datetime | None, Field(
        title="Business date",
        description="The day this run is for. Empty: the run's scheduled start time, so a late "
                    "or retried run still works on the day it was scheduled for.",
    )] = None
    batch_size: BatchSize = None
    shards: int | None = Field(None, ge=1, le=64, title="Shards", description=(
        "Run the sweep as this many separate deployment runs, spread over the workers. "
        "Empty: the Variable journeys_daily_shards, else 1 (in this run)."))


class OrderJourneyRequest(Request):
    """Advance one order through every step that is due now."""

    order_id: str = Field(min_length=1, max_length=100, title="Order", description=(
        "The order's source id (5432100001) or its name (#1001)."))
    as_of: AsOf = None


UPLOAD_LIMIT_BYTES = 5_000_000  # what a form's text area carries; larger files go to S3


class IngestRequest(Request):
    """Read a file of orders, products, shipments, tracking events or feedback: one on the
    worker's machine, one pasted into the form, or one in S3 (exactly one of the three)."""

    kind: Literal["orders", "products", "shipments", "events", "feedback"] = Field(
        title="What the file holds")
    source: str | None = Field(None, max_length=2000, title="File on the worker", description=(
        "A path on the worker's machine (an s3:// URL here is read from S3 too)."))
    text: str | None = Field(None, title="Or paste the file", description=(
        "The file's contents (JSON Lines, or CSV with its header line), at most 5 MB. Removed "
        "from the run's parameters once read: Prefect keeps parameters, customers' data must "
        "not stay there."))
    s3_url: str | None = Field(None, max_length=2000, pattern=r"^s3://[^/]+/.+",
                               title="Or a file in S3", description=(
        "s3://bucket/key, e.g. a file dropped in the store's bucket."))
    format: str | None = Field(None, max_length=40, title="Format", description=(
        "Force a format (shopify, canonical, csv, aftership ...). Empty: detected per record."))
    as_of: AsOf = None

    @model_validator(mode="after")
    def _one_input(self) -> IngestRequest:
        given = [name for name in ("source", "text", "s3_url") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of: a file on the worker, the pasted file, or "
                             f"a file in S3 (given: {', '.join(given) or 'none'})")
        size = len(self.text.encode()) if self.text else 0
        if size > UPLOAD_LIMIT_BYTES:
            raise ValueError(f"the pasted file has {size:,} bytes; at most "
                             f"{UPLOAD_LIMIT_BYTES:,} (5 MB) can be pasted: put it in S3 and "
                             "give its s3:// URL instead")
        return self


class QuarantineReleaseRequest(Request):
    """Re-validate quarantined records (after the source was corrected) and feed them back in."""

    entry_ids: list[int] = Field(min_length=1, max_length=1000, title="Quarantine entries",
                                 description="Ids from `journeys quarantine list` or the "
                                             "quarantine artifact.")
    as_of: AsOf = None


class QuarantineReviewRequest(Request):
    """Ask an operator to release, fix or dismiss quarantined records through a form."""

    entry_ids: list[int] = Field(default_factory=list, max_length=100, title="Entries",
                                 description="Quarantine entry ids. Empty: the oldest open "
                                             "entries, up to the limit.")
    limit: int = Field(20, ge=1, le=100, title="At most this many entries in the form")
    timeout_minutes: int | None = Field(None, ge=1, le=10_080, title="Wait at most (minutes)",
                                        description="Then every entry stays quarantined. Empty: "
                                        "the Variable journeys_decision_timeout_minutes, else 240.")


class ErasureRequest(Request):
    """Erase one customer: anonymise them, keep a hashed suppression entry and a balanced ledger.

    The customer is named by one of their orders, not by e-mail: Prefect keeps every run's
    parameters, and an erasure must not leave the address behind in them.
    """

    order_id: str = Field(min_length=1, max_length=100, title="One of the customer's orders",
                          description="Its number (#1001) or source id; the customer who "
                                      "placed it is erased, with all their orders.")
    requested_by: str = Field(min_length=1, max_length=100, title="Requested by",
                              description="Who handled the request; kept in the audit trail.")


class HoldReviewRequest(Request):
    """Ask an operator to decide held orders through a form (one run, one form, many orders)."""

    order_ids: list[str] = Field(default_factory=list, max_length=100, title="Orders", description=(
        "Source ids or names to review. Empty: the oldest held orders, up to the limit."))
    limit: int = Field(100, ge=1, le=100, title="At most this many orders in the form",
                       description="The oldest first.")
    timeout_minutes: int | None = Field(None, ge=1, le=10_080, title="Wait at most (minutes)",
                                        description="Then every order stays on hold. Empty: the "
                                        "Variable journeys_decision_timeout_minutes, else 240.")


class CaseReviewRequest(Request):
    """Ask an operator to decide open service cases through a form."""

    case_ids: list[int] = Field(default_factory=list, max_length=100, title="Cases",
                                description="Case ids. Empty: the oldest open cases.")
    limit: int = Field(20, ge=1, le=100, title="At most this many cases in the form")
    timeout_minutes: int | None = Field(None, ge=1, le=10_080, title="Wait at most (minutes)",
                                        description="Then every case stays open. Empty: the "
                                        "Variable journeys_decision_timeout_minutes, else 240.")


class ReconcileRequest(Request):
    """Pull Shopify orders updated since the watermark into the webhook inbox, then drain it."""

    since: Annotated[datetime | None, Field(
        title="Updated since",
        description="Ask Shopify for orders updated after this instant (ISO 8601 with a zone), "
                    "e.g. to recover from a long outage. Empty: the newest order version a "
                    "previous reconcile stored, less 5 minutes; else 72 hours back.",
    )] = None
    page_size: int = Field(3, ge=1, le=10, title="Orders per request", description=(
        "Orders per GraphQL request. Shopify refuses a query priced above 1,000 points and "
        "each order with its lines, fulfillments and refunds is priced at about 270, so keep "
        "this at 3 unless Shopify's cost extension shows room."))


class ReturnReviewRequest(Request):
    """Ask an operator to decide requested returns through a form (approve, reject, credit)."""

    rmas: list[str] = Field(default_factory=list, max_length=100, title="Returns", description=(
        "RMA numbers to review. Empty: the oldest requested returns, up to the limit."))
    limit: int = Field(20, ge=1, le=100, title="At most this many returns in the form")
    timeout_minutes: int | None = Field(None, ge=1, le=10_080, title="Wait at most (minutes)",
                                        description="Then every return stays requested. Empty: "
                                        "the Variable journeys_decision_timeout_minutes, else 240.")


class CancelOrderRequest(Request):
    """Cancel one order not shipped yet (a shipped one becomes a return to sender)."""

    order_id: str = Field(min_length=1, max_length=100, title="Order",
                          description="Its number (#1001) or source id.")
    reason: str = Field(min_length=1, max_length=300, title="Why",
                        description="Kept in the order's timeline.")
    cancelled_by: str = Field(min_length=1, max_length=100, title="Cancelled by",
                              description="Who decided; kept in the timeline.")


class FindOrderRequest(Request):
    """Find an order by its number, the customer's name or their e-mail address."""

    query: str = Field(min_length=1, max_length=200, title="Number, name or e-mail", description=(
        "An order number (#1001 or 1001), part of the customer's first or last name (ada, "
        "ada lov) or their whole e-mail address; any case. One match shows the whole order, "
        "several a short list. Once the run starts, an e-mail or a name is kept in this run "
        "only masked (***@example.com, A. L.)."))
