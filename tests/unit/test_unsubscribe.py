"""Unsubscribe tokens, the suppression list, and one-click headers in the serialised mail."""

from __future__ import annotations

import email
import hashlib
from email.policy import default as default_policy

import pytest
from sqlalchemy import select

from tasks.messaging.outbox import dispatch, enqueue
from tasks.messaging.unsubscribe import (
    UnsubscribeError,
    make_token,
    suppress,
    unsubscribe,
    unsubscribe_url,
    verify_token,
)
from tasks.store.db import session_scope
from tasks.store.models import Suppression
from tests.conftest import NOW
from tests.factories import add_customer
from tests.unit.test_governor import DAYTIME, row, use_recorder

SECRET = "test-secret"


def test_token_round_trip_and_url(runtime):
    token = make_token(" Ada@Example.com ", SECRET)
    assert verify_token(token, SECRET) == "ada@example.com"
    url = unsubscribe_url("ada@example.com", runtime)
    assert url == f"https://northwind.example/unsubscribe?token={token}"


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
    url = unsubscribe_url("ada@example.com", runtime)
    assert f"List-Unsubscribe: <{url}>\r\n".encode() in raw  # one line, no encoded word
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    assert parsed["List-Unsubscribe"] == f"<{url}>"
    text, html = (part.get_content() for part in parsed.iter_parts())
    assert url.replace("&", "&amp;") in html and "Unsubscribe" in html
    raw_t, _ = by_class["transactional"]
    assert b"List-Unsubscribe" not in raw_t and b"unsubscribe?token" not in raw_t

    with session_scope(engine) as session:
        token = url.split("token=")[1]
        unsubscribe(session, token, DAYTIME, secret_key=runtime.settings.secret_key)
        assert session.scalars(select(Suppression.reason)).all() == ["unsubscribe"]
