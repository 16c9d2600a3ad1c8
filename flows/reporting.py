"""What operators read in the Prefect UI: one set of artifacts per run, under stable keys.

Each key keeps its history in Prefect (one version per run), so "journey-funnel" over time is
the funnel over time. Every artifact says where the run's books are archived.

Prefect renders markdown artifacts, artifact descriptions and every text cell of a table
artifact as Markdown (GFM, HTML sanitised), so whatever came from a customer or a source goes
through `md_text`/`md_cell`: addresses masked, nothing lost, nothing that becomes a link, an image
or markup. Times are the store's (configs/store.yaml `timezone`) to the minute; money carries its
currency (`format_money`).

Prefect itself is imported only where an artifact is published: `journeys find-order` renders the
same pages in a terminal without loading it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.markdown import (  # noqa: F401
    CELL_LIMIT,
    EMAIL,
    mask_emails,
    mask_words,
    md_cell,
    md_text,
)
from tasks.messaging.money import address_lines, format_money
from tasks.store.db import session_scope
from tasks.store.models import Message, Order
from tasks.store.queries import find_order, order_detail, order_view, search_orders

if TYPE_CHECKING:
    from tasks.archive import ArtifactStore
    from tasks.runtime import Runtime

# Markdown that shows customer text as written: tasks/markdown.py (the returns report uses it too).


def md_code(text: str) -> str:
    """A code span holding `text` whatever backticks it has (archive paths, keys)."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"  # CommonMark strips one space each side


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "order"


# --- store time, money, people ---------------------------------------------------------------


def store_time(instant: datetime | str | None, zone: str) -> str:
    """`18 Nov 2026 10:00`: an instant in the store's time zone, to the minute."""
    if instant is None:
        return ""
    if isinstance(instant, str):
        instant = datetime.fromisoformat(instant)
    local = instant.astimezone(ZoneInfo(zone))
    return f"{local.day} {local:%b %Y %H:%M}"


def store_clock(instant: datetime, zone: str) -> str:
    """A title's time: `18 Nov 2026 10:00 America/New_York`."""
    return f"{store_time(instant, zone)} {zone}"


def day(iso_date: str | None) -> str:
    """`25 Nov 2026` for a calendar date (a promised delivery has no time zone); "—" for none."""
    if not iso_date:
        return "—"
    when = date.fromisoformat(iso_date)
    return f"{when.day} {when:%b %Y}"


def masked_person(name: str | None) -> str:
    """`Ada Lovelace` → `Ada L.`: enough to tell customers apart, not a full name to keep.
    One word could be a family name, so it keeps its initial only (`Lovelace` → `L.`)."""
    words = (name or "").split()
    if len(words) < 2:
        return f"{words[0][0]}." if words else "—"
    return f"{words[0]} {words[-1][0]}."


def masked_query(query: str) -> str:
    """A search as it may be kept: an address masked, a name as initials, a number as is."""
    text = " ".join(query.split())
    if "@" in text:  # even a part of an address keeps only what follows the @
        return "***@" + text.rpartition("@")[2]
    if re.fullmatch(r"\S*\d\S*", text):  # one word with a digit: an order number or id
        return text
    return " ".join(f"{word[0].upper()}." for word in text.split())


# --- the store picture (after each sweep) ----------------------------------------------------


def messages_by_status_and_reason(session: Session) -> list[dict[str, Any]]:
    reason = func.coalesce(Message.reason, "")
    rows = session.execute(select(Message.status, reason, func.count())
                           .group_by(Message.status, reason).order_by(Message.status, reason))
    return [{"status": status, "reason": md_text(why, 200), "messages": count}
            for status, why, count in rows]


def store_picture(rt: Runtime) -> dict[str, Any]:
    """The whole store now: funnel, messages, holds, quarantine, points (one read)."""
    from flows.common import app_engine
    from tasks.reporting import report

    with session_scope(app_engine()) as session:
        picture = report(session, rt.config)
        picture["messages"] = messages_by_status_and_reason(session)
    return picture


def counts_table(counts: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """Rows for a table artifact; a text cell there is Markdown too."""
    return [{label: md_cell(key), "count": value} for key, value in counts.items()] or [
        {label: "none", "count": 0}]


def publish_store_picture(now: datetime, manifest: dict[str, int], manifest_ref: str) -> None:
    """Funnel, messages, holds, quarantine and liability tables plus one markdown summary."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    from flows.common import runtime
    from tasks.returns.report import returns_markdown

    rt = runtime()
    title = f"Store after the sweep — {store_clock(now, rt.config.store.timezone)}"
    picture = store_picture(rt)
    create_table_artifact(counts_table(picture["orders_by_state"], "state"), key="journey-funnel",
                          description="Orders by state after this run")
    create_table_artifact(picture["messages"] or [{"status": "none", "messages": 0}],
                          key="journey-messages", description="Messages by status and reason")
    create_table_artifact(counts_table(picture["holds_by_reason"], "reason"), key="journey-holds",
                          description="Orders on hold, by reason")
    create_table_artifact(counts_table(picture["quarantine_by_reason"], "reason"),
                          key="journey-quarantine", description="Open quarantine, by reason")
    create_markdown_artifact(store_markdown(title, picture, manifest, manifest_ref),
                             key="journey-store", description=title)
    create_markdown_artifact(returns_markdown(picture["returns"]), key="journey-returns",
                             description="Returns: by status, rate by reason and product, "
                             "refunds, exchanges, credit notes")
    create_link_artifact(manifest_ref, link_text="this run's manifest in the archive",
                         key="journey-archive", description="Where this run's books are kept")


def store_markdown(title: str, picture: dict[str, Any], manifest: dict[str, int],
                   manifest_ref: str) -> str:
    lines = [f"# {title}", "", "## This run's books", "",
             "| received | processed | quarantined | deferred | duplicates | unexplained |",
             "|---|---|---|---|---|---|",
             "| {received} | {processed} | {quarantined} | {deferred} | {duplicates} | "
             "{unexplained} |".format(**{k: manifest.get(k, 0) for k in (
                 "received", "processed", "quarantined", "deferred", "duplicates",
                 "unexplained")}),
             "", f"Archived at {md_code(manifest_ref)}.", ""]
    lines += table_md("Orders by state", picture["orders_by_state"])
    lines += table_md("Holds by reason", picture["holds_by_reason"])
    lines += table_md("Quarantine by reason", picture["quarantine_by_reason"])
    lines += table_md("Messages by status", picture["messages_by_status"])
    lines += [f"**Points liability:** {liability_text(picture['points_liability'])}.", ""]
    return "\n".join(lines)


def liability_text(liability: dict[str, Any]) -> str:
    """`120 pending ($1.20), 50 approved ($0.50)`; without a point value, points only."""
    def part(status: str) -> str:
        worth = liability.get(f"{status}_value")
        return f"{liability.get(status, 0)} {status}" + (f" ({md_text(worth)})" if worth else "")

    return ", ".join(part(status) for status in ("pending", "approved"))


def table_md(title: str, counts: dict[str, Any]) -> list[str]:
    rows = [f"| {md_cell(key)} | {value} |" for key, value in counts.items()] or ["| none | 0 |"]
    return [f"### {title}", "", "| | count |", "|---|---|", *rows, ""]


# --- one order, and finding it ----------------------------------------------------------------

MATCH_LIMIT = 20  # a list longer than this is not a lookup: ask for a narrower search
LINK_SECONDS = 24 * 3600  # how long a document link in an artifact opens the document
SEARCH_KEY = "find-order"  # the artifact of a search with no or several matches


@dataclass(frozen=True)
class Page:
    """One markdown artifact: its key, its description (one line) and its text."""

    key: str
    title: str
    markdown: str
    orders: tuple[str, ...] = ()  # the numbers of the orders it shows


def number_of(order: Order | dict[str, Any]) -> str:
    if isinstance(order, dict):
        return order["name"] or order["external_id"]
    return order.name or order.external_id


def publish(page: Page) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(page.markdown, key=page.key, description=page.title)


def publish_order_timeline(order_id: str) -> dict[str, Any]:
    """One order in full (items, customer, address, totals, timeline, steps, messages,
    documents) as the markdown artifact `order-<number>`; returns the order's view."""
    from flows.common import app_engine, runtime

    with session_scope(app_engine()) as session:
        order = find_order(session, order_id)
        view = order_view(session, order)
        page = order_page(session, order, runtime())
    publish(page)
    return view


def order_search(session: Session, query: str, rt: Runtime) -> Page:
    """The page a search shows: one match in full, several as a short list, none as a hint."""
    orders = search_orders(session, query, MATCH_LIMIT + 1)
    if len(orders) == 1:
        return order_page(session, orders[0], rt)
    return matches_page(masked_query(query), orders, rt)


def order_page(session: Session, order: Order, rt: Runtime) -> Page:
    detail = order_detail(session, order)
    number = number_of(detail)
    return Page(f"order-{artifact_key(number)}", md_text(f"Order {number}: {detail['state']}"),
                order_markdown(detail, rt), (number,))


def matches_page(shown_query: str, orders: list[Order], rt: Runtime) -> Page:
    store = rt.config.store
    quoted = md_text(f"“{shown_query}”")
    if not orders:
        return Page(SEARCH_KEY, md_text(f"No order matches “{shown_query}”"), "\n".join([
            f"# No order matches {quoted}", "",
            "Search by order number (#1001 or 1001), the customer's whole e-mail address, or "
            "part of their first or last name (any case)."]))
    shown = orders[:MATCH_LIMIT]
    more = (f" Showing the newest {MATCH_LIMIT}: narrow the search to see the others."
            if len(orders) > MATCH_LIMIT else "")
    lines = [f"# Orders matching {quoted}", "",
             f"{len(shown)} orders, newest first. Search for one number to see it in full.{more}",
             "", f"| order | placed ({md_text(store.timezone)}) | customer | total | state |",
             "|---|---|---|---|---|"]
    lines += [match_row(order, store.timezone, store.default_locale) for order in shown]
    return Page(SEARCH_KEY, md_text(f"{len(shown)} orders match “{shown_query}”"),
                "\n".join(lines), tuple(number_of(o) for o in shown))


def match_row(order: Order, zone: str, locale: str) -> str:
    who = customer_label(order.customer.first_name, order.customer.last_name, order.email)
    total = format_money(order.total, order.currency, locale)
    return (f"| {md_cell(number_of(order))} | {store_time(order.placed_at, zone)} | "
            f"{md_cell(who)} | {md_text(total)} | {md_cell(order.state)} |")


def customer_label(first: str | None, last: str | None, email: str | None) -> str:
    """`Ada L. · ***@example.com`: who, masked as everywhere in the Prefect UI."""
    first, last = (first or "").strip(), (last or "").strip()
    who = " ".join(part for part in (first, f"{last[0]}." if last else "") if part) or "—"
    return f"{who} · {mask_emails(email)}" if email else who


def order_markdown(detail: dict[str, Any], rt: Runtime) -> str:
    """The whole order for an operator helping its customer, in store time and its currency."""
    store = rt.config.store
    zone, number = store.timezone, number_of(detail)
    hold = f" — {md_text(detail['hold_reason'])}" if detail["hold_reason"] else ""
    customer = detail["customer"]
    lines = [f"# Order {md_text(number)}", "",
             f"Placed {store_time(detail['placed_at'], zone)} ({md_text(zone)}) · "
             f"{md_text(detail['source'])} {md_text(detail['external_id'])} · payment "
             f"{md_text(detail['financial_status'])}", "",
             f"- **State:** {md_text(detail['state'])}{hold}",
             "- **Customer:** " + md_text(customer_label(
                 customer["first_name"], customer["last_name"], customer["email"])),
             f"- **Ship to:** {md_text(shipping_address(detail, store.default_locale))}",
             f"- **Shipping:** {md_text(detail['shipping_title'] or '—')} · promised delivery "
             f"{day(detail['promised_delivery'])}", ""]
    lines += items_md(detail, store.default_locale)
    lines += events_md(detail["events"], zone)
    lines += steps_md(detail["steps"], zone)
    lines += messages_md(detail["messages"], zone)
    lines += parcels_md(detail["shipments"], zone)
    lines += returns_md(detail.get("returns", []))
    lines += [f"**Points:** {points_text(detail['loyalty'])}", ""]
    lines += documents_md(detail, rt)
    return "\n".join(lines)


def shipping_address(detail: dict[str, Any], locale: str) -> str:
    """The address on one line, its recipient masked like the customer; "—" for none."""
    address = dict(detail["shipping_address"])
    if not any(address.get(k) for k in ("address1", "city", "zip", "country_code")):
        return "—"
    recipient = address.pop("name", None) or " ".join(
        str(address[k]) for k in ("first_name", "last_name") if address.get(k))
    address = {k: v for k, v in address.items() if k not in ("first_name", "last_name", "phone")}
    # Prefect keeps artifacts beyond an erasure's reach: house numbers and flat names stay
    # hidden, as on the customer's own order page ("4•• Alder St").
    address |= {k: mask_words(str(address[k]), only_with_digits=True)
                for k in ("address1", "address2") if address.get(k)}
    return ", ".join([masked_person(recipient), *address_lines(address, locale)])


def items_md(detail: dict[str, Any], locale: str) -> list[str]:
    currency = detail["currency"]

    def cash(amount: Decimal | str) -> str:
        return md_text(format_money(amount, currency, locale))

    lines = ["## Items", "", "| product | variant | qty | price | line total |",
             "|---|---|---|---|---|"]
    for line in detail["lines"]:
        total = Decimal(line["unit_price"]) * line["quantity"] - Decimal(line["discount"])
        qty = str(line["quantity"]) + (f" ({line['refunded']} refunded)" if line["refunded"]
                                       else "")
        lines.append(f"| {md_cell(line['title'])} | {md_cell(line['variant'] or line['sku'] or '')}"
                     f" | {qty} | {cash(line['unit_price'])} | {cash(total)} |")
    totals = detail["totals"]
    discounts = Decimal(totals["discounts"])
    lines += ["", "| | |", "|---|---|", f"| Subtotal | {cash(totals['subtotal'])} |",
              f"| Discounts | {cash(-discounts if discounts else discounts)} |",
              f"| Shipping | {cash(totals['shipping'])} |",
              f"| Tax{' (included)' if detail['taxes_included'] else ''} | "
              f"{cash(totals['tax'])} |",
              f"| **Total** | **{cash(totals['total'])}** |", ""]
    return lines


def events_md(events: list[dict[str, Any]], zone: str) -> list[str]:
    lines = ["## Timeline", "", "| at | what | from | to | by |", "|---|---|---|---|---|"]
    rows = [f"| {store_time(e['at'], zone)} | {md_cell(e['kind'])} | {md_cell(e['from'] or '')} "
            f"| {md_cell(e['to'] or '')} | {md_cell(e['actor'])} |" for e in events]
    return lines + (rows or ["| none | | | | |"]) + [""]


def steps_md(steps: list[dict[str, Any]], zone: str) -> list[str]:
    lines = ["## Steps", "", "| step | status | due | note |", "|---|---|---|---|"]
    rows = [f"| {md_cell(s['name'])} | {md_cell(s['status'])} | {store_time(s['due_at'], zone)} "
            f"| {md_cell(s['reason'] or '')} |" for s in steps]
    return lines + (rows or ["| none | | | |"]) + [""]


def messages_md(messages: list[dict[str, Any]], zone: str) -> list[str]:
    lines = ["## Messages", "", "| template | status | sent | note |", "|---|---|---|---|"]
    rows = [f"| {md_cell(m['template'])} | {md_cell(m['status'])} | "
            f"{store_time(m['sent_at'], zone)} | {md_cell(m['reason'] or '')} |"
            for m in messages]
    return lines + (rows or ["| none | | | |"]) + [""]


def parcels_md(shipments: list[dict[str, Any]], zone: str) -> list[str]:
    if not shipments:
        return []
    lines = ["## Parcels", "", "| carrier | tracking number | status | delivered |",
             "|---|---|---|---|"]
    return lines + [f"| {md_cell(s['carrier'] or '')} | {md_cell(s['tracking_number'] or '')} | "
                    f"{md_cell(s['status'])} | {store_time(s['delivered_at'], zone)} |"
                    for s in shipments] + [""]


def returns_md(returns: list[dict[str, Any]]) -> list[str]:
    if not returns:
        return []
    lines = ["## Returns", "", "| RMA | status | resolution | reason | items |",
             "|---|---|---|---|---|"]
    return lines + [f"| {md_cell(r['rma'])} | {md_cell(r['status'])} | "
                    f"{md_cell(r['resolution'])} | {md_cell(r['reason'])} | "
                    + md_cell(", ".join(f"{ln['quantity']} × {ln['title']}" for ln in r["lines"]))
                    + " |" for r in returns] + [""]


def points_text(ledger: list[dict[str, Any]]) -> str:
    """`+55 pending, +30 approved`: the order's points by status (entries summed)."""
    totals: dict[str, int] = {}
    for entry in ledger:
        totals[entry["status"]] = totals.get(entry["status"], 0) + entry["points"]
    return ", ".join(f"{points:+d} {md_text(status)}" for status, points in totals.items()) or \
        "none"


def documents_md(detail: dict[str, Any], rt: Runtime) -> list[str]:
    """Every document the order has (its archive rows, return labels), each a link or a path."""
    documents = [(a["kind"], a["ref"]) for a in detail["artifacts"]]
    documents += [(f"return label {r['rma']}", r["label"]) for r in detail.get("returns", [])
                  if r.get("label")]
    lines = ["## Documents", ""]
    if not documents:
        return [*lines, "None yet."]
    hours = LINK_SECONDS // 3600
    if any(ref.startswith("s3://") for _, ref in documents):
        lines += [f"Links open for {hours} hours; run find-order again for fresh ones.", ""]
    return lines + [f"- {md_text(kind)}: {document_link(ref, rt)}" for kind, ref in documents]


def document_link(ref: str, rt: Runtime) -> str:
    """A presigned download link for an S3 object, the path of a local one, a URL as is.

    Documents are kept in one zip per batch (`<bundle>#<member>`): the link opens the zip, and
    the member is named; `journeys artifacts ORDER --fetch DIR` saves the order's files alone.
    """
    from tasks.archive import split_member_ref

    if ref.startswith(("https://", "http://")):
        return f"[open]({ref})"
    bundle, member = split_member_ref(ref)
    inside = f" (the file {md_code(member)} in its batch's zip)" if member else ""
    if ref.startswith("s3://") and (url := presigned_url(rt.archive, bundle)):
        return f"[download]({url}){inside}"
    return md_code(bundle.removeprefix("file://")) + inside


def presigned_url(archive: ArtifactStore, object_ref: str) -> str | None:
    """A time-limited GET link for an s3:// object of this archive; None when it is not one."""
    from tasks.archive import S3Store

    bucket, _, key = object_ref.removeprefix("s3://").partition("/")
    if not isinstance(archive, S3Store) or bucket != archive.bucket or not key:
        return None
    meta = archive.client.meta
    return signing_client(meta.endpoint_url, meta.region_name).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=LINK_SECONDS)


@lru_cache(maxsize=4)
def signing_client(endpoint_url: str, region: str | None) -> Any:
    """An S3 client that presigns with SigV4: botocore presigns with SigV2 unless told, which
    newer AWS regions and KMS-encrypted objects refuse. Same credentials as the archive's."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                        config=Config(signature_version="s3v4"))
