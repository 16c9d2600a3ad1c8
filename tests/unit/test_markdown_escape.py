"""What operators read in Prefect: customer text escaped, not lost; store time; money with currency.

Prefect renders markdown artifacts, descriptions and table-artifact cells as GFM (marked, HTML
through DOMPurify): each expected string below is the exact Markdown that renders as the input
reads, and makes no link, image, HTML or emphasis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.journey import summary_markdown
from flows.reporting import (
    customer_label,
    liability_text,
    masked_person,
    masked_query,
    md_cell,
    md_code,
    md_text,
    store_markdown,
    store_time,
)
from tasks.reporting import points_liability
from tasks.store.db import session_scope
from tasks.store.models import LoyaltyEntry
from tests.factories import add_customer


@pytest.mark.parametrize(("text", "markdown"), [
    # the two reported strings: the '>' and the brackets were replaced by spaces
    ("high value: 4706.00 USD > 2500", "high value: 4706.00 USD > 2500"),
    ("line_items[0].price", r"line\_items\[0\].price"),
    # hostile input: text, never a link, an image, HTML or an autolink
    ("[x](javascript:alert(1))", r"\[x\](javascript:alert(1))"),
    ("![img](http://evil.example/p.png)", r"!\[img\](http\://evil.example/p.png)"),
    ("<script>alert(1)</script>", r"\<script>alert(1)\</script>"),
    ("<https://evil.example>", r"\<https\://evil.example>"),
    ("visit www.evil.example", r"visit www\.evil.example"),
    ("**bold** _it_ ~~gone~~ `code` &lt;", r"\*\*bold\*\* \_it\_ \~\~gone\~\~ \`code\` \&lt;"),
    # a table cell keeps its pipe and backslash; a line break does not end the row
    ("a|b\\c\r\nnext\tline", r"a\|b\\c next line"),
    # what would start a heading, quote, list or rule at the start of a line
    ("# not a heading", r"\# not a heading"),
    ("> not a quote", r"\> not a quote"),
    ("- not a list", r"\- not a list"),
    ("12. not a list", r"12\. not a list"),
    ("=== not a rule", r"\=== not a rule"),
    # an address is masked first, then escaped; the domain stays searchable as written
    ("bounce: Ava.N@Shop-1.example said no", r"bounce: \*\*\*@Shop-1.example said no"),
])
def test_md_text_escapes_what_would_be_markup_and_keeps_every_character(text, markdown):
    assert md_text(text) == markdown


def test_md_cell_cuts_long_text_with_an_ellipsis_before_escaping():
    cell = md_cell("[" * 200)
    assert cell == "\\[" * 119 + "…"  # never a cut between a backslash and its character
    assert md_cell(None) == "None" and md_cell(42) == "42"


def test_md_code_holds_backticks_and_masks_nothing_it_should_not():
    assert md_code("file:///srv/a.zip") == "` file:///srv/a.zip `"
    assert md_code("a``b") == "``` a``b ```"


def test_people_and_queries_are_kept_masked():
    assert masked_person("Ada Lovelace") == "Ada L."
    assert masked_person("Lovelace") == "L." and masked_person("  ") == "—"
    assert customer_label("Ada", None, None) == "Ada"
    assert customer_label(None, "Lovelace", "") == "L."
    assert customer_label(" ", " ", "ada@example.com") == "— · ***@example.com"
    assert masked_query("  Ada   LOVE ") == "A. L."
    assert masked_query("ADA@Example.com") == "***@Example.com" and masked_query("ada@") == "***@"
    assert masked_query("#1001") == "#1001" and masked_query("MP-77001") == "MP-77001"


def test_times_are_the_stores_to_the_minute():
    instant = datetime(2026, 11, 18, 15, 4, 59, 123456, tzinfo=UTC)
    assert store_time(instant, "America/New_York") == "18 Nov 2026 10:04"
    assert store_time(instant.isoformat(), "Asia/Tokyo") == "19 Nov 2026 00:04"
    assert store_time(None, "UTC") == ""
    title = summary_markdown(instant, {"stages": {}, "messages": {}}, "America/New_York")
    assert title.splitlines()[0] == "# Journey sweep — 18 Nov 2026 10:04 America/New_York"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_points_liability_has_its_money_value_in_the_artifact_and_the_report(engine, cfg, now):
    with session_scope(engine) as session:
        customer = add_customer(session, now, "points@example.com")
        session.add_all(LoyaltyEntry(source_key=f"k{n}", customer_id=customer.id, kind="earn",
                                     points=points, status=status, rule_version="2026-01",
                                     created_at=now - timedelta(days=n))
                        for n, (points, status) in enumerate([(120, "pending"), (55, "approved"),
                                                              (-5, "approved")]))
    with session_scope(engine) as session:
        liability = points_liability(session, cfg)

    assert cfg.loyalty.point_value is not None  # configs/loyalty.yaml prices a point
    assert liability == {"pending": 120, "approved": 50, "pending_value": "$1.20",
                         "approved_value": "$0.50"}
    markdown = store_markdown("Store", {"orders_by_state": {}, "holds_by_reason": {},
                                        "quarantine_by_reason": {}, "messages_by_status": {},
                                        "points_liability": liability}, {}, "file:///m.json")
    assert "**Points liability:** 120 pending ($1.20), 50 approved ($0.50)." in markdown
    assert liability_text({"pending": 3, "approved": 0}) == "3 pending, 0 approved"
