"""Fuzzing the intake parsers for a bounded time: whatever the file holds, a reader either
refuses the whole file with one line (IntakeError) or returns one result per record, each parsed
or rejected with at least one reason. What the readers return is then stored in PostgreSQL, the
stricter of our databases, and must account for every record.

The whole file runs in about JOURNEYS_FUZZ_SECONDS (default 20): loading Great Expectations comes
out of the budget, then hypothesis runs in short rounds until each target's share is spent, and
the rest is left for storing (each target runs at least one round however small the budget).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tasks.aftercare.feedback import FeedbackItem, ingest_feedback, read_feedback
from tasks.intake import IntakeError, OrderIn, ingest_orders, read_orders
from tasks.intake.schema import Rejected
from tasks.quality.gate import gate_orders
from tasks.store.db import make_engine, session_scope
from tasks.store.migrate import ensure_schema
from tasks.tracking.formats import TrackingEventIn, read_events
from tasks.tracking.ingest import ingest_events

BUDGET = float(os.environ.get("JOURNEYS_FUZZ_SECONDS", "20"))
STORE_SHARE = 0.15  # of the budget, kept for storing what the readers returned
ROUND = 25  # examples per hypothesis run; runs repeat until the target's time is up
KEPT = 3000  # parsed records kept per kind for the store phase
ROUND_SETTINGS = settings(
    max_examples=ROUND, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much])

# ---------------------------------------------------------------- values

HOSTILE_TEXT = ["{{ 7*7 }}", "{% for x in %}", "<script>alert(1)</script>",
                "'); DROP TABLE orders;--", "Eve\r\nBcc: x@y.z", "=?UTF-8?Q?=0A?=", "\x00",
                "nul\x00", "\ufeff", "\u2028", "\x85", "\ud800", "x" * 6_000, "", " ", "|,|", "é"]
NUMBER_TEXT = ["25.00", "0", "-1", "1e400", "NaN", "Infinity", "-0", str(10**30), "1,5",
               "0.00001", "99999999999999.9999", "１２", "\udc00"]
DATE_TEXT = ["2026-11-18T08:00:00Z", "2026-11-18T08:00:00", "2999-01-01T00:00:00Z",
             "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "yesterday", "2026-02-30"]
CODES = ["USD", "usd", "EUR", "XXX", "US", "paid", "refunded", "InTransit", "Delivered",
         "Teleported", "ups", "DHL Express", "damaged", "America", "Europe/Berlin", "\ud800x"]

text = st.text(max_size=40) | st.sampled_from(HOSTILE_TEXT)
scalars = (st.none() | st.booleans() | st.integers(-(10**40), 10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | text
           | st.sampled_from(NUMBER_TEXT + DATE_TEXT + CODES))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(text, inner, max_size=3), max_leaves=6)
numbers = st.sampled_from(NUMBER_TEXT) | st.integers(-(10**32), 10**32) | json_values
dates = st.sampled_from(DATE_TEXT) | st.integers(-(10**20), 10**20) | json_values
codes = st.sampled_from(CODES) | json_values


def record(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with any subset of the known fields, each of a plausible or a random type,
    and now and then a field nobody knows."""
    return st.fixed_dictionaries({}, optional={**fields, "unexpected": json_values})


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any],
            fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A valid record with up to two of its fields dropped or given another value, so that
    many records parse and the hostile value sits deep inside an otherwise good one."""
    changed = dict(base)
    for name in draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=2)):
        if draw(st.integers(0, 4)) == 0:
            changed.pop(name, None)
        else:
            changed[name] = draw(fields[name])
    return changed


def either(base: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]) -> Any:
    """Mostly a good record changed a little, else any subset of the fields."""
    return st.one_of(mutated(base, fields), mutated(base, fields), record(fields))


def some(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A list of `strategy` values, or something that is not a list at all."""
    return st.lists(strategy, max_size=3) | json_values


address = record({name: text for name in ("name", "first_name", "last_name", "address1",
                                          "address2", "city", "province_code", "zip",
                                          "country_code", "phone")})

# ---------------------------------------------------------------- orders

SHOPIFY_LINE = {"id": 1, "sku": "TEE-1", "title": "Tee", "quantity": 1, "price": "25.00"}
SHOPIFY_ORDER = {"id": 9001, "email": "s@example.com", "created_at": "2026-11-18T08:00:00Z",
                 "currency": "USD", "financial_status": "paid", "total_price": "30.00",
                 "shipping_lines": [{"title": "Standard", "price": "5.00"}],
                 "line_items": [SHOPIFY_LINE], "customer": {"first_name": "Sam"}}
shopify_line = either(SHOPIFY_LINE, {"id": numbers, "sku": text, "title": text, "name": text,
                       "variant_title": text, "quantity": numbers, "price": numbers,
                       "total_discount": numbers, "grams": numbers, "gift_card": json_values,
                       "properties": some(record({"name": text, "value": json_values}))})
shopify_order = either(SHOPIFY_ORDER, {
    "id": numbers, "name": text, "email": text, "contact_email": text, "created_at": dates,
    "currency": codes, "financial_status": codes, "subtotal_price": numbers,
    "total_discounts": numbers, "total_tax": numbers, "taxes_included": json_values,
    "total_price": numbers, "line_items": some(shopify_line),
    "discount_codes": some(record({"code": text, "amount": numbers, "type": text})),
    "shipping_lines": some(record({"code": text, "title": text, "price": numbers})),
    "tax_lines": some(record({"title": text, "rate": numbers, "price": numbers})),
    "shipping_address": address | json_values,
    "customer": record({"id": numbers, "email": text, "first_name": text, "last_name": text,
                        "accepts_marketing": json_values, "orders_count": numbers,
                        "tags": json_values, "locale": codes, "timezone": codes,
                        "email_marketing_consent": json_values}) | json_values,
    "buyer_accepts_marketing": json_values, "note": text,
    "note_attributes": some(record({"name": text, "value": json_values})), "tags": json_values,
    "cancelled_at": dates, "customer_locale": codes,
})
CANONICAL_LINE = {"sku": "TEE-1", "title": "Tee", "quantity": 1, "unit_price": "25.00"}
CANONICAL_ORDER = {"external_id": "C-1", "email": "c@example.com",
                   "placed_at": "2026-11-18T08:00:00Z", "currency": "USD",
                   "financial_status": "paid", "lines": [CANONICAL_LINE],
                   "customer": {"first_name": "Cy", "timezone": "Europe/Berlin"}}
canonical_line = either(CANONICAL_LINE, {"external_id": numbers, "sku": text, "title": text,
                         "variant_title": text, "quantity": numbers, "unit_price": numbers,
                         "total_discount": numbers, "grams": numbers, "gift_card": json_values,
                         "properties": json_values})
canonical_order = either(CANONICAL_ORDER, {
    "source": text, "external_id": numbers, "name": text, "email": text, "placed_at": dates,
    "currency": codes, "financial_status": codes, "subtotal": numbers, "discounts": numbers,
    "discount_codes": some(record({"code": text, "amount": numbers, "type": text})),
    "shipping": record({"code": text, "title": text, "price": numbers}) | json_values,
    "tax": numbers, "tax_lines": json_values, "taxes_included": json_values, "total": numbers,
    "accepts_marketing": json_values, "lines": some(canonical_line),
    "shipping_address": address | json_values,
    "customer": record({"external_id": numbers, "email": text, "first_name": text,
                        "orders_count": numbers, "tags": json_values, "locale": codes,
                        "timezone": codes}) | json_values,
    "gift_note": text, "note_attributes": json_values, "tags": json_values,
    "cancelled_at": dates, "locale": codes,
})

CSV_REQUIRED = ["order_id", "email", "placed_at", "currency", "quantity", "unit_price"]
CSV_OPTIONAL = ["order_name", "financial_status", "first_name", "last_name", "ship_name",
                "ship_address1", "ship_zip", "ship_country_code", "shipping_price",
                "discount_total", "tax_total", "taxes_included", "total", "gift_note", "sku",
                "title", "accepts_marketing", "unknown_column"]
cell = (st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
        | st.sampled_from([t for t in HOSTILE_TEXT + NUMBER_TEXT + DATE_TEXT + CODES
                           if t.isascii() or t.encode("utf-8", "ignore").decode() == t]
                          + ['"', ",", "\r"]))  # a UTF-8 file holds no lone surrogate


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, list[list[str]]]:
    """A header with the required columns (any order, optional ones mixed in) and rows whose
    order ids repeat, so rows group into orders."""
    extra = draw(st.lists(st.sampled_from(CSV_OPTIONAL), unique=True, max_size=8))
    columns = draw(st.permutations(CSV_REQUIRED + extra))
    ids = st.sampled_from(["1", "2", " 2 ", "", "<b>3</b>"]) | cell
    rows = draw(st.lists(st.fixed_dictionaries(
        {c: ids if c == "order_id" else cell for c in columns}), max_size=6))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # quotes cells holding \r or \n
    writer.writerow(columns)
    writer.writerows([row[c] for c in columns] for row in rows)
    return buffer.getvalue(), [[row["order_id"]] for row in rows]


def csv_records(rows: list[list[str]]) -> int:
    """Orders a CSV should yield: one per distinct order id, one per row without an id."""
    ids = [row[0].strip() for row in rows]
    return len({i for i in ids if i}) + ids.count("")


# ---------------------------------------------------------------- events and feedback

checkpoint = record({"checkpoint_time": dates, "tag": codes, "subtag": text, "message": text,
                     "location": text | json_values})
CANONICAL_EVENT = {"event_id": "E-1", "tracking_number": "1Z1", "tag": "InTransit",
                   "occurred_at": "2026-11-18T09:00:00Z"}
canonical_event = either(CANONICAL_EVENT, {
    "event_id": numbers, "tracking_number": text, "carrier": codes, "tag": codes,
    "subtag": text, "occurred_at": dates, "message": text, "location": json_values,
    "expected_delivery": dates})
AFTERSHIP_MSG = {"tracking_number": "1Z1", "slug": "ups", "tag": "InTransit"}
aftership_msg = either(AFTERSHIP_MSG, {
    "tracking_number": text, "slug": codes, "tag": codes, "subtag": text,
    "expected_delivery": dates, "checkpoints": some(checkpoint)})
aftership_event = st.builds(lambda body, msg: {**body, "msg": msg},
                            either({"event_id": "E-2", "ts": 1763456400},
                                   {"event_id": numbers, "ts": numbers}),
                            aftership_msg | json_values)
FEEDBACK = {"order_external_id": "FB-1", "rating": 2, "comment": "ok",
            "submitted_at": "2026-11-17T09:00:00Z"}
feedback = either(FEEDBACK, {"order_id": numbers, "sig": text, "order_external_id": numbers,
                   "source": text, "rating": numbers, "comment": text,
                   "tags": some(codes), "submitted_at": dates})


def dumped(value: Any, ascii_only: bool) -> str:
    """JSON as producers write it: escaped ASCII, or raw UTF-8 (U+2028 and U+0085 stay raw)."""
    raw = json.dumps(value, ensure_ascii=False)
    return json.dumps(value) if ascii_only or not encodable(raw) else raw


def encodable(line: str) -> bool:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only its JSON escape can be written
        return False
    return True


def json_lines(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[list[str]]:
    """Lines of JSON objects (NaN and Infinity included), now and then a line that is not."""
    good = st.builds(dumped, objects, st.booleans())
    junk = (st.builds(dumped, json_values, st.booleans())
            | text.map(lambda t: t.replace("\n", " ").replace("\r", " ")).filter(encodable))
    return st.lists(st.one_of(good, good, good, junk), max_size=6)


def records_in(lines: list[str]) -> int:
    """Non-blank lines; a byte-order mark at the start of the file is not content."""
    return sum(1 for i, line in enumerate(lines) if (line.removeprefix("\ufeff") if i == 0
                                                     else line).strip())


# ---------------------------------------------------------------- the property


class Tally:
    """Counts across the whole file, and the parsed records kept for the store phase."""

    def __init__(self) -> None:
        self.files = self.records = self.parsed = self.rejected = self.file_errors = 0
        self.kept: dict[str, list[Any]] = {"orders": [], "events": [], "feedback": []}

    def keep(self, kind: str, results: list[Any]) -> None:
        room = KEPT - len(self.kept[kind])
        self.kept[kind] += results[:max(room, 0)]


def checked_results(read: Callable[[], Iterable[Any]], parsed: tuple[type, ...],
                    tally: Tally) -> list[Any] | None:
    """The reader's results, each parsed or rejected with reasons; None for a whole-file
    problem, which must be one IntakeError line. Any other exception fails the test."""
    tally.files += 1
    try:
        results = list(read())
    except IntakeError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message and "\r" not in message, message
        tally.file_errors += 1
        return None
    for result in results:
        if isinstance(result, Rejected):
            assert result.reasons, result
            assert all(r["field"] and str(r["reason"]).strip() for r in result.reasons), result
            tally.rejected += 1
        else:
            assert isinstance(result, parsed), type(result)
            tally.parsed += 1
    tally.records += len(results)
    return results


def written(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def lines_target(path: Path, objects: st.SearchStrategy[Any], reader: Callable[[Path], Any],
                 parsed: tuple[type, ...], kind: str, tally: Tally) -> Callable[[], None]:
    """A round over JSON Lines files of `objects`: one result per non-blank line."""

    @ROUND_SETTINGS
    @given(json_lines(objects))
    def run(lines: list[str]) -> None:
        results = checked_results(lambda: reader(written(path, lines)), parsed, tally)
        if results is not None:
            assert len(results) == records_in(lines), lines
            tally.keep(kind, results)

    return run


def csv_target(path: Path, tally: Tally) -> Callable[[], None]:
    @ROUND_SETTINGS
    @given(csv_files())
    def run(drawn: tuple[str, list[list[str]]]) -> None:
        content, rows = drawn
        path.write_text(content, encoding="utf-8", newline="")
        results = checked_results(lambda: read_orders(path, "csv"), (OrderIn,), tally)
        if results is not None:
            assert len(results) == csv_records(rows)
            tally.keep("orders", results)

    return run


def bytes_target(path: Path, tally: Tally) -> Callable[[], None]:
    """Arbitrary bytes, with and without a format forced: never more than a one-line error."""
    starts = st.sampled_from([b"", b"{", b"order_id,email,placed_at,currency,quantity,"
                              b"unit_price\n", b'{"line_items": [], "id": 1}\n'])

    @ROUND_SETTINGS
    @given(starts, st.binary(max_size=300), st.sampled_from([None, "shopify", "canonical",
                                                             "csv"]))
    def run(start: bytes, data: bytes, fmt: str | None) -> None:
        path.write_bytes(start + data)
        checked_results(lambda: read_orders(path, fmt), (OrderIn,), tally)
        checked_results(lambda: read_events(path), (TrackingEventIn,), tally)
        checked_results(lambda: read_feedback(path), (FeedbackItem,), tally)

    return run


def model_target(tally: Tally) -> Callable[[], None]:
    """The canonical schema itself: an OrderIn or a ValidationError, nothing else."""

    @ROUND_SETTINGS
    @given(canonical_order | json_values)
    def run(data: Any) -> None:
        tally.files += 1
        try:
            OrderIn.model_validate(data)
            tally.parsed += 1
        except ValidationError as exc:
            assert exc.errors(include_url=False)
            tally.rejected += 1
        tally.records += 1

    return run


def run_for(seconds: float, run: Callable[[], None]) -> None:
    """Hypothesis rounds until `seconds` have passed (at least one round)."""
    stop = time.monotonic() + seconds
    while True:
        run()
        if time.monotonic() >= stop:
            return


def store_kept(pg_url: str, tally: Tally, now, runtime) -> dict[str, dict[str, int]]:
    """Everything the readers returned, stored in PostgreSQL; each kind accounts for itself."""
    engine = make_engine(pg_url)
    ensure_schema(engine)
    writers = {"orders": lambda s, items: ingest_orders(s, items, now),
               "events": lambda s, items: ingest_events(s, items, now),
               "feedback": lambda s, items: ingest_feedback(s, items, now, runtime)}
    counts = {}
    try:
        for kind, write in writers.items():
            with session_scope(engine) as session:
                counts[kind] = write(session, tally.kept[kind]).as_dict()
    finally:
        engine.dispose()
    return counts


def test_fuzzed_files_are_parsed_or_rejected_and_never_raise(
    tmp_path, pg_url, now, runtime, figure
):
    tally = Tally()
    targets = [
        lines_target(tmp_path / "shopify.jsonl", shopify_order,
                     lambda p: read_orders(p, "shopify"), (OrderIn,), "orders", tally),
        lines_target(tmp_path / "canonical.jsonl", canonical_order,
                     lambda p: read_orders(p, "canonical"), (OrderIn,), "orders", tally),
        csv_target(tmp_path / "orders.csv", tally),
        bytes_target(tmp_path / "bytes.bin", tally),
        lines_target(tmp_path / "events.jsonl", aftership_event | canonical_event, read_events,
                     (TrackingEventIn,), "events", tally),
        lines_target(tmp_path / "feedback.jsonl", feedback, read_feedback, (FeedbackItem,),
                     "feedback", tally),
        model_target(tally),
    ]
    started = time.monotonic()
    gate_orders([], now, 1.0)  # Great Expectations loads once per process: inside the budget
    loaded = time.monotonic()
    share = (BUDGET * (1 - STORE_SHARE) - (loaded - started)) / len(targets)
    for run in targets:
        run_for(share, run)
    fuzzed = time.monotonic() - loaded
    counts = store_kept(pg_url, tally, now, runtime)
    stored_in = time.monotonic() - loaded - fuzzed

    for kind, result in counts.items():
        assert result["received"] == len(tally.kept[kind]), kind
        assert result["received"] == (result["accepted"] + result["updated"]
                                      + result["duplicates"] + result["quarantined"]), kind
    stored = sum(len(tally.kept[kind]) for kind in counts)
    figure(f"fuzz intake: {tally.files:,} generated files and objects in {fuzzed:.0f} s "
           f"({len(targets)} targets) — {tally.records:,} records: {tally.parsed:,} parsed, "
           f"{tally.rejected:,} rejected with reasons; {tally.file_errors:,} one-line file errors, "
           f"tracebacks 0; "
           f"{stored:,} results stored in PostgreSQL in {stored_in:.1f} s, lost 0")
