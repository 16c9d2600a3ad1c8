"""Unsubscribe tokens, the suppression list, and one-click headers in the serialised mail."""

from __future__ import annotations

import email
import hashlib
from email.policy import default as default_policy
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from tasks.messaging.outbox import dispatch, enqueue
from tasks.messaging.unsubscribe import (
    UnsubscribeError,
    list_unsubscribe,
    make_token,
    marketing_links,
    preferences_url,
    suppress,
    unsubscribe,
    unsubscribe_url,
    verify_token,
)
from tasks.store.db import session_scope
from tasks.store.models import Erasure, Suppression
from tests.conftest import NOW
from tests.factories import add_customer
from tests.unit.test_governor import DAYTIME, row, use_recorder

SECRET = "test-secret"


def test_token_round_trip_and_url(runtime):
    token = make_token(" Ada@Example.com ", SECRET)
    assert verify_token(token, SECRET) == "ada@example.com"
    url = unsubscribe_url("ada@example.com", runtime)
    base = runtime.config.store.links_base_url.rstrip("/")
    assert url == f"{base}/unsubscribe?token={token}"


def test_marketing_links_go_to_the_customers_page_or_the_address_token(runtime):
    rows = [SimpleNamespace(id=1, customer_id=7, to_addr="ada@example.com", created_at=NOW,
                            msg_class="marketing"),
            SimpleNamespace(id=2, customer_id=None, to_addr="bob@example.com", created_at=NOW,
                            msg_class="marketing"),
            SimpleNamespace(id=3, customer_id=7, to_addr="ada@example.com", created_at=NOW,
                            msg_class="transactional")]
    links = marketing_links(rows, runtime)
    assert links == {1: preferences_url(7, NOW, runtime),
                     2: unsubscribe_url("bob@example.com", runtime)}
    assert len(links[1].split("/u/")[1]) == 48 and "ada" not in links[1]
    header = list_unsubscribe(links[1], "unsubscribe@northwind.example")
    assert header == f"<{links[1]}>, <mailto:unsubscribe@northwind.example?subject=unsubscribe>"
    assert len("List-Unsubscribe: " + header) < 998


def test_unsubscribe_takes_new_and_old_tokens_and_whole_links(engine, runtime):
    secret = runtime.settings.secret_key
    with session_scope(engine) as session:
        ada = add_customer(session, NOW, "Ada@Example.com")
        gone = add_customer(session, NOW, "gone@example.com")
        session.add(Erasure(subject="x" * 64, customer_id=gone.id, actor="test",
                            requested_at=NOW))
        session.flush()
        new_url = preferences_url(ada.id, NOW, runtime)
        for text in (new_url, new_url.rsplit("/", 1)[1], " " + new_url + " "):
            assert unsubscribe(session, text, NOW, secret_key=secret) == "ada@example.com"
        old_url = unsubscribe_url("bob@example.com", runtime)
        assert unsubscribe(session, old_url, NOW, secret_key=secret) == "bob@example.com"
        for bad in (preferences_url(gone.id, NOW, runtime), new_url[:-1] + "x", "/u/short"):
            with pytest.raises(UnsubscribeError):
                unsubscribe(session, bad, NOW, secret_key=secret)
    with session_scope(engine) as session:
        assert sorted(session.scalars(select(Suppression.email_hash))) == sorted(
            hashlib.sha256(a.encode()).hexdigest() for a in ("ada@example.com", "bob@example.com"))


@pytest.mark.parametrize("tamper", [
    lambda t: make_token("eve@example.com", SECRET).split(".")[0] + "." + t.split(".")[1],
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
    lambda t: t.split(".")[0],
    lambda t: "!!!." + t.split(".")[1],
    lambda t: "",
])
def test_tampered_tokens_are_rejected_in_one_line(tamper):
    token = make_token("ada@example.com", SECRET)
    with pytest.raises(UnsubscribeError) as error:
        verify_token(tamper(token), SECRET)
    assert "\n" not in str(error.value)
    with pytest.raises(UnsubscribeError):
        verify_token(token, "another-secret")


def test_unsubscribe_is_idempotent_and_bounce_escalates(engine):
    token = make_token("ada@example.com", SECRET)
    with session_scope(engine) as session:
        assert unsubscribe(session, token, NOW, secret_key=SECRET) == "ada@example.com"
        unsubscribe(session, token, NOW, secret_key=SECRET)
        suppress(session, "ADA@example.com", "complaint", NOW, "fbl")
    with session_scope(engine) as session:
        (entry,) = session.scalars(select(Suppression)).all()
        assert entry.email_hash == hashlib.sha256(b"ada@example.com").hexdigest()
        assert (entry.reason, entry.source) == ("complaint", "fbl")
        suppress(session, "ada@example.com", "unsubscribe", NOW, "link")  # weaker: no change
        suppress(session, "ada@example.com", "bounce", NOW, "ses")
    with session_scope(engine) as session:
        assert session.scalars(select(Suppression.reason)).all() == ["bounce"]
    with pytest.raises(ValueError):
        suppress(session, "x@example.com", "whim", NOW, None)


def test_one_click_headers_only_on_marketing_mail(engine, runtime):
    recorder = use_recorder(runtime)
    with session_scope(engine) as session:
        ada = add_customer(session, NOW, "ada@example.com", accepts_marketing=True)
        enqueue(session, [row(ada, DAYTIME), row(ada, DAYTIME, "transactional")], NOW)
    with session_scope(engine) as session:
        assert dispatch(session, DAYTIME, runtime).sent == 2
    by_class = {}
    for mail in recorder.mails:
        raw = mail.wire_bytes()
        parsed = email.message_from_bytes(raw, policy=default_policy)
        by_class["marketing" if b"List-Unsubscribe" in raw else "transactional"] = (raw, parsed)
    raw, parsed = by_class["marketing"]
    url = preferences_url(ada.id, NOW, runtime)  # the row was created at NOW
    value = f"<{url}>, <mailto:{runtime.config.store.unsubscribe_email}?subject=unsubscribe>"
    assert f"List-Unsubscribe: {value}\r\n".encode() in raw  # one line, no encoded word
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    assert parsed["List-Unsubscribe"] == value
    text, html = (part.get_content() for part in parsed.iter_parts())
    assert url.replace("&", "&amp;") in html and "Unsubscribe" in html
    raw_t, _ = by_class["transactional"]
    assert b"List-Unsubscribe" not in raw_t and b"/u/" not in raw_t

    with session_scope(engine) as session:
        unsubscribe(session, url, DAYTIME, secret_key=runtime.settings.secret_key)
        assert session.scalars(select(Suppression.reason)).all() == ["unsubscribe"]
