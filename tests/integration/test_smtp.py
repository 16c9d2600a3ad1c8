"""The SMTP transport and the dispatcher against a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

import email
import json
from datetime import timedelta
from email.policy import default as default_policy
from typing import Any

import pytest
from sqlalchemy import select

from tasks.messaging.outbox import dispatch, enqueue, message_id_for
from tasks.messaging.transports import OutgoingMail, SmtpTransport
from tasks.runtime import Runtime
from tasks.store.db import session_scope
from tasks.store.models import Message
from tests.conftest import FIXTURES
from tests.factories import add_customer
from tests.fixtures_smtp import free_port

DOMAIN = "northwind.example"


@pytest.fixture
def smtp_rt(settings, cfg, smtp_server) -> Runtime:  # noqa: F811
    smtp_settings = settings.model_copy(update={"mail_transport": smtp_server.url})
    return Runtime(settings=smtp_settings, config=cfg)


def context(**customer: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / "golden" / "confirmation_context.json").read_text())
    data["customer"].update(customer)
    return data


def queue(engine, now, to_addr: str, msg_class: str = "transactional", **ctx: Any) -> str:
    """One pending outbox row (no order needed); returns its effect key."""
    key = f"test:{to_addr}:{msg_class}"
    data = ctx.pop("data", None) or context(**ctx)
    customer_id = None
    if msg_class == "marketing":  # the governor sends marketing only with consent, by day
        with session_scope(engine) as session:
            customer_id = add_customer(session, now, to_addr, accepts_marketing=True,
                                       timezone="Europe/Berlin").id
    row = {
        "effect_key": key, "order_id": None, "customer_id": customer_id, "template": "confirmation",
        "version": 1, "msg_class": msg_class, "priority": 10, "to_addr": to_addr,
        "message_id": message_id_for(key, DOMAIN), "context": data, "not_before": now,
    }
    with session_scope(engine) as session:
        enqueue(session, [row], now)
    return key


def run_dispatch(engine, now, rt):
    with session_scope(engine) as session:
        return dispatch(session, now, rt)


def message_row(engine, key: str) -> Message:
    with session_scope(engine) as session:
        return session.scalars(select(Message).where(Message.effect_key == key)).one()


def header_lines(raw: bytes) -> list[bytes]:
    """The raw header block, unfolded: one entry per header field."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def test_smtp_delivers_multipart_mail_with_its_headers(engine, smtp_rt, smtp_server, now):  # noqa: F811
    key = queue(engine, now, "ada@example.com", name="Ada Lovelace")
    result = run_dispatch(engine, now, smtp_rt)

    assert result.as_dict() == {"sent": 1, "failed": 0, "deferred": 0, "unknown": 0}
    [received] = smtp_server.received
    assert received.mail_from == "hello@northwind.example"
    assert received.rcpt_tos == ["ada@example.com"]
    parsed = email.message_from_bytes(received.content, policy=default_policy)
    assert parsed["From"] == "Northwind Outfitters <hello@northwind.example>"
    assert parsed["To"] == "Ada Lovelace <ada@example.com>"
    assert parsed["Reply-To"] == "Northwind Outfitters <care@northwind.example>"
    assert parsed["Subject"] == "Thank you for your order #1001"
    assert parsed["Date"] == "Wed, 18 Nov 2026 10:00:00 +0000"
    assert parsed["Message-ID"] == message_id_for(key, DOMAIN)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert "Total: $257.32" in parsed.get_body(("plain",)).get_content()
    assert "Thank you, Ada!" in parsed.get_body(("html",)).get_content()
    row = message_row(engine, key)
    assert (row.status, row.attempts, row.sent_at, row.reason) == ("sent", 1, now, None)


@pytest.mark.parametrize(
    "name",
    [
        "Eve\r\nBcc: evil@attacker.example",
        "Eve =?UTF-8?Q?=0D=0ABcc:_evil@attacker.example?=",
        "Eve =?UTF-8?B?DQpCY2M6IGV2aWxAYXR0YWNrZXIuZXhhbXBsZQ==?=",
    ],
)
def test_injected_newlines_never_become_headers(engine, smtp_rt, smtp_server, now, name):  # noqa: F811
    data = context(name=name)
    data["order"]["name"] = name.replace("Eve", "#1001")  # lands in the Subject
    queue(engine, now, "eve@example.com", data=data)
    assert run_dispatch(engine, now, smtp_rt).sent == 1

    raw = smtp_server.received[0].content
    fields = header_lines(raw)
    names = [f.split(b":", 1)[0].lower() for f in fields]
    assert b"bcc" not in names
    assert names.count(b"to") == 1 and names.count(b"subject") == 1
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=default_policy)
    assert parsed["Bcc"] is None
    assert [a.addr_spec for a in parsed["To"].addresses] == ["eve@example.com"]
    assert smtp_server.received[0].rcpt_tos == ["eve@example.com"]


def test_temporary_and_permanent_refusals_in_one_connection(engine, smtp_rt, smtp_server, now):  # noqa: F811
    smtp_server.data_replies["later@example.com"] = "451 try later"
    smtp_server.rcpt_replies["nobody@example.com"] = "550 no such user"
    later = queue(engine, now, "later@example.com")
    nobody = queue(engine, now, "nobody@example.com")
    fine = queue(engine, now, "fine@example.com")

    result = run_dispatch(engine, now, smtp_rt)

    assert result.as_dict() == {"sent": 1, "failed": 1, "deferred": 1, "unknown": 0}
    assert [r.rcpt_tos for r in smtp_server.received] == [["fine@example.com"]]
    deferred, failed, sent = (message_row(engine, k) for k in (later, nobody, fine))
    assert (deferred.status, deferred.attempts) == ("pending", 1)
    assert deferred.not_before == now + timedelta(minutes=5)
    assert deferred.reason == "451 try later"
    assert (failed.status, failed.reason) == ("failed", "550 no such user")
    assert sent.status == "sent"


def test_deferred_mail_is_retried_with_the_same_message_id(engine, smtp_rt, smtp_server, now):  # noqa: F811
    smtp_server.rcpt_replies["later@example.com"] = "421 busy"
    key = queue(engine, now, "later@example.com")
    assert run_dispatch(engine, now, smtp_rt).deferred == 1
    assert run_dispatch(engine, now + timedelta(minutes=4), smtp_rt).as_dict()["sent"] == 0

    del smtp_server.rcpt_replies["later@example.com"]
    assert run_dispatch(engine, now + timedelta(minutes=5), smtp_rt).sent == 1
    parsed = email.message_from_bytes(smtp_server.received[0].content, policy=default_policy)
    assert parsed["Message-ID"] == message_id_for(key, DOMAIN)
    assert message_row(engine, key).attempts == 2


def test_lost_connection_after_data(engine, smtp_rt, smtp_server, now):  # noqa: F811
    """Marketing: outcome unknown, never resent. Transactional: resent, same Message-ID."""
    smtp_server.hang_up_after_data.update({"promo@example.com", "order@example.com"})
    promo = queue(engine, now, "promo@example.com", msg_class="marketing")
    first = run_dispatch(engine, now, smtp_rt)
    order = queue(engine, now, "order@example.com")
    second = run_dispatch(engine, now, smtp_rt)

    assert (first.unknown, second.deferred) == (1, 1)
    promo_row, order_row = message_row(engine, promo), message_row(engine, order)
    assert promo_row.status == "unknown" and "during DATA" in promo_row.reason
    assert order_row.status == "pending" and "same Message-ID" in order_row.reason

    smtp_server.hang_up_after_data.clear()
    later = run_dispatch(engine, now + timedelta(hours=1), smtp_rt)
    assert later.as_dict() == {"sent": 1, "failed": 0, "deferred": 0, "unknown": 0}
    assert [r.rcpt_tos for r in smtp_server.received] == [["order@example.com"]]
    assert message_row(engine, promo).status == "unknown"


def test_no_server_defers_the_whole_batch(settings, now):
    from email.message import EmailMessage

    mail = OutgoingMail(1, "k", "a@example.com", "b@example.com", EmailMessage().as_bytes(),
                        now)
    outcomes = SmtpTransport("127.0.0.1", free_port(), settings).send_batch([mail, mail])
    assert [o.status for o in outcomes] == ["deferred", "deferred"]
    assert outcomes[0].reason.startswith("smtp connect:")
