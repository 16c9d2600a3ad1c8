"""Link tokens: opaque, bound to one page, expiring; migration 0007 matches the models."""

from __future__ import annotations

from datetime import date

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tasks.links import LinkError, Purpose, make_token, mask, read_token
from tasks.store.models import Base

SECRET = "links-test-secret"
DAY = date(2026, 11, 18)


def test_a_token_names_nothing_and_opens_only_its_own_page():
    token = make_token(SECRET, Purpose.ORDER, 66, DAY)
    assert len(token) == 48 and "66" not in token and token.isascii()
    assert token == make_token(SECRET, Purpose.ORDER, 66, DAY)  # a re-rendered mail: same link
    assert token != make_token(SECRET, Purpose.ORDER, 67, DAY)
    link = read_token(SECRET, token, Purpose.ORDER, DAY)
    assert (link.subject, link.extra, link.issued) == (66, 0, DAY)
    with pytest.raises(LinkError):
        read_token(SECRET, token, Purpose.FEEDBACK, DAY)  # another page's token
    with pytest.raises(LinkError):
        read_token("another-secret", token, Purpose.ORDER, DAY)


@pytest.mark.parametrize("bad", ["", "x", "A" * 48, "é" * 48, None, "../../etc/passwd"])
def test_malformed_or_forged_tokens_are_refused_alike(bad):
    with pytest.raises(LinkError):
        read_token(SECRET, bad, Purpose.ORDER, DAY)


def test_a_flipped_character_is_refused():
    token = make_token(SECRET, Purpose.REVIEW, 5, DAY, extra=9)
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    with pytest.raises(LinkError):
        read_token(SECRET, flipped, Purpose.REVIEW, DAY)


def test_expiry_counts_days_from_the_mail():
    token = make_token(SECRET, Purpose.FEEDBACK, 5, DAY)
    assert read_token(SECRET, token, Purpose.FEEDBACK, date(2027, 2, 16), 90).subject == 5
    with pytest.raises(LinkError):
        read_token(SECRET, token, Purpose.FEEDBACK, date(2027, 2, 17), 90)
    assert read_token(SECRET, token, Purpose.FEEDBACK, date(2036, 1, 1), 0).subject == 5


def test_logs_see_only_a_token_prefix():
    token = make_token(SECRET, Purpose.ORDER, 1, DAY)
    assert mask(f"/o/{token}") == f"/o/{token[:6]}…"


def test_migration_0007_matches_the_models(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    tables = ("reviews", "mail_preferences", "page_hits")
    assert [d for d in diff if any(t in str(d) for t in tables)] == []


def test_migration_0008_matches_the_models(engine):
    """The survey topic column and the optional rating (the fit survey's answers)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert [d for d in diff if "feedback" in str(d)] == []
