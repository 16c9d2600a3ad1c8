"""The SMTP transport and the dispatcher against a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

import email
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from tests.fixtures_smtp import (
    HOST,
    Received,
    ScriptedHandler,
    SmtpServer,
    free_port,
    serving,
)

DOMAIN = "northwind.example"
NOTHING = {"sent": 0, "failed": 0, "deferred": 0, "unknown": 0}


@dataclass
class WireServer(SmtpServer):
    """The scripted server, also keeping every message that reached DATA, whatever the reply
    (a refusal, a hang-up): what went over the wire, not only what was accepted."""

    data_seen: list[Received] = field(default_factory=list)

    def message_ids(self, address: str) -> list[str]:
        return [email.message_from_bytes(r.content, policy=default_policy)["Message-ID"]
                for r in self.data_seen if address in r.rcpt_tos]


class WireHandler(ScriptedHandler):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.state.data_seen.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def wire() -> Iterator[WireServer]:
    with serving(WireHandler(WireServer(host=HOST, port=free_port()))) as state:
        yield state


@pytest.fixture
def wire_rt(settings, cfg, wire) -> Runtime:
    return Runtime(settings=settings.model_copy(update={"mail_transport": wire.url}), config=cfg)


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
    plain = parsed.get_body(("plain",)).get_content()
    assert re.search(r"^Total +\$257\.32\r?$", plain, re.M)
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


def figure_once(figure, engine):
    """The fault tests run on SQLite and PostgreSQL: one figure line, from the PostgreSQL run."""
    return figure if engine.dialect.name == "postgresql" else (lambda line: None)


def test_a_4xx_after_data_defers_and_the_retry_sends_the_same_message(
        engine, wire_rt, wire, now, figure):
    wire.data_replies["later@example.com"] = "451 4.3.0 try again later"
    key = queue(engine, now, "later@example.com")
    first = run_dispatch(engine, now, wire_rt)
    deferred = message_row(engine, key)
    too_early = run_dispatch(engine, now + timedelta(minutes=4), wire_rt)
    del wire.data_replies["later@example.com"]
    retry = run_dispatch(engine, now + timedelta(minutes=5), wire_rt)

    assert (first.deferred, too_early.as_dict(), retry.sent) == (1, NOTHING, 1)
    assert (deferred.status, deferred.attempts) == ("pending", 1)
    assert deferred.reason == "451 4.3.0 try again later"
    assert deferred.not_before == now + timedelta(minutes=5)
    ids = wire.message_ids("later@example.com")
    assert ids == [message_id_for(key, DOMAIN)] * 2  # refused once, accepted once
    assert [r.rcpt_tos for r in wire.received] == [["later@example.com"]]
    sent = message_row(engine, key)
    assert (sent.status, sent.attempts, sent.sent_at) == ("sent", 2, now + timedelta(minutes=5))
    figure_once(figure, engine)(
        f"smtp 4xx after DATA ({deferred.reason!r}): deferred "
        f"{(deferred.not_before - now).seconds // 60} min with the reason, retried "
        f"{len(ids) - 1}x, delivered {len(wire.received)}x with the same Message-ID "
        f"({len(set(ids))} Message-ID over {len(ids)} DATA attempts)")


def test_a_5xx_after_data_fails_with_the_reason_and_is_never_retried(
        engine, wire_rt, wire, now, figure):
    wire.data_replies["spam@example.com"] = "554 5.7.1 message refused as spam"
    key = queue(engine, now, "spam@example.com")
    first = run_dispatch(engine, now, wire_rt)
    later = [run_dispatch(engine, now + delay, wire_rt)
             for delay in (timedelta(minutes=5), timedelta(hours=7), timedelta(days=2))]

    assert first.as_dict() == {**NOTHING, "failed": 1}
    assert [r.as_dict() for r in later] == [NOTHING] * 3
    row = message_row(engine, key)
    assert (row.status, row.attempts, row.sent_at) == ("failed", 1, None)
    assert row.reason == "554 5.7.1 message refused as spam"
    assert len(wire.message_ids("spam@example.com")) == 1 and not wire.received
    figure_once(figure, engine)(
        f"smtp 5xx after DATA: failed with the reason {row.reason!r}, DATA attempts "
        f"{len(wire.message_ids('spam@example.com'))}, resent "
        f"{len(wire.message_ids('spam@example.com')) - 1} over {len(later)} later dispatches")


def test_lost_connection_after_data(engine, wire_rt, wire, now, figure):
    """Marketing: outcome unknown, never resent. Transactional: resent, same Message-ID."""
    wire.hang_up_after_data.update({"promo@example.com", "order@example.com"})
    promo = queue(engine, now, "promo@example.com", msg_class="marketing")
    first = run_dispatch(engine, now, wire_rt)
    order = queue(engine, now, "order@example.com")
    second = run_dispatch(engine, now, wire_rt)

    assert (first.unknown, second.deferred) == (1, 1)
    promo_row, order_row = message_row(engine, promo), message_row(engine, order)
    assert promo_row.status == "unknown" and "during DATA" in promo_row.reason
    assert order_row.status == "pending" and "same Message-ID" in order_row.reason

    wire.hang_up_after_data.clear()
    later = [run_dispatch(engine, now + timedelta(hours=h), wire_rt) for h in (1, 2)]
    assert later[0].as_dict() == {**NOTHING, "sent": 1}
    assert later[1].as_dict() == NOTHING
    assert [r.rcpt_tos for r in wire.received] == [["order@example.com"]]
    order_ids, promo_ids = wire.message_ids("order@example.com"), wire.message_ids(
        "promo@example.com")
    assert order_ids == [message_id_for(order, DOMAIN)] * 2  # the resend is the same message
    assert promo_ids == [message_id_for(promo, DOMAIN)]  # reached DATA once, never again
    promo_row, order_row = message_row(engine, promo), message_row(engine, order)
    assert (promo_row.status, promo_row.attempts) == ("unknown", 1)
    assert (order_row.status, order_row.attempts) == ("sent", 2)
    figure_once(figure, engine)(
        f"smtp lost after DATA: transactional resent {len(order_ids) - 1}x with the same "
        f"Message-ID ({len(set(order_ids))} Message-ID over {len(order_ids)} DATA attempts, "
        f"delivered 1), marketing resent {len(promo_ids) - 1} over {len(later)} later "
        f"dispatches (status {promo_row.status})")


def test_no_server_defers_the_whole_batch(settings, now):
    from email.message import EmailMessage

    mail = OutgoingMail(1, "k", "a@example.com", "b@example.com", EmailMessage().as_bytes(),
                        now)
    outcomes = SmtpTransport("127.0.0.1", free_port(), settings).send_batch([mail, mail])
    assert [o.status for o in outcomes] == ["deferred", "deferred"]
    assert outcomes[0].reason.startswith("smtp connect:")
