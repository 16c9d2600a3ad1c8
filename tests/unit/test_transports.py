"""File transport bundles and the SES transport's outcome mapping."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

import boto3
import pytest
from botocore.stub import Stubber

from tasks.messaging.transports import (
    FileTransport,
    OutgoingMail,
    SesTransport,
    bundle_key,
    member_name,
)

SENT = datetime(2026, 11, 18, 10, tzinfo=UTC)


def mail(row_id: int, key: str, sent: datetime = SENT) -> OutgoingMail:
    message = EmailMessage()
    message["Subject"] = f"hello {row_id}"
    message["Date"] = format_datetime(sent)
    message.set_content("body")
    return OutgoingMail(row_id, key, "hello@northwind.example", f"c{row_id}@example.com",
                        message.as_bytes(policy=SMTP), sent)


class RecordingArchive:
    """Records put_bundle calls; the real store is tested in test_archive and test_confirm."""

    def __init__(self) -> None:
        self.bundles: dict[str, dict[str, bytes]] = {}

    def put_bundle(self, key: str, members: dict[str, bytes]) -> dict[str, str]:
        self.bundles[key] = members
        return {name: f"mem://{key}#{name}" for name in members}


def test_file_transport_writes_one_bundle_per_batch():
    archive = RecordingArchive()
    batch = [mail(1, "order:1:confirm:confirmation:v1"), mail(2, "order:2:confirm:confirmation:v1")]
    outcomes = FileTransport(archive).send_batch(batch)

    [(key, members)] = archive.bundles.items()
    assert re.fullmatch(r"mail/2026/11/18/[0-9a-f]{16}\.zip", key)
    assert list(members) == [
        "order_1_confirm_confirmation_v1.eml", "order_2_confirm_confirmation_v1.eml"
    ]
    assert b"Subject: hello 2\r\n" in members["order_2_confirm_confirmation_v1.eml"]
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert outcomes[1].artifact_ref == f"mem://{key}#order_2_confirm_confirmation_v1.eml"


def key_of(messages: list[OutgoingMail]) -> str:
    return bundle_key(messages, {member_name(m.effect_key): m.wire_bytes() for m in messages})


def test_bundle_key_is_content_addressed():
    a, b = mail(1, "k:1"), mail(2, "k:2")
    assert key_of([a, b]) == key_of([mail(1, "k:1"), mail(2, "k:2")])
    assert key_of([a, b]) != key_of([a])
    # a retry of the same mail later the same day is new content, so it never collides
    assert key_of([a]) != key_of([mail(1, "k:1", sent=SENT.replace(hour=11))])
    assert member_name("order:7:confirm:confirmation:v2") == "order_7_confirm_confirmation_v2.eml"


def test_empty_batch_writes_nothing():
    archive = RecordingArchive()
    assert FileTransport(archive).send_batch([]) == []
    assert archive.bundles == {}


# SES cannot run here, so botocore's Stubber stands in for the service: it checks the exact
# request we build and replays the service's documented answers and errors.


@pytest.fixture
def ses():
    client = boto3.client(
        "sesv2", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    with Stubber(client) as stubber:
        yield client, stubber


def test_ses_sends_raw_mime_and_keeps_the_message_id(ses):
    client, stubber = ses
    outgoing = mail(1, "k:1")
    stubber.add_response(
        "send_email",
        {"MessageId": "0100-abc"},
        {
            "FromEmailAddress": "hello@northwind.example",
            "Destination": {"ToAddresses": ["c1@example.com"]},
            "Content": {"Raw": {"Data": outgoing.wire_bytes()}},
        },
    )
    [outcome] = SesTransport(client).send_batch([outgoing])
    assert (outcome.status, outcome.artifact_ref) == ("sent", "ses:0100-abc")
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "http_status", "status"),
    [
        ("MessageRejected", 400, "failed"),
        ("TooManyRequestsException", 429, "deferred"),
        ("InternalFailure", 500, "deferred"),
    ],
)
def test_ses_errors_map_to_outcomes(ses, code, http_status, status):
    client, stubber = ses
    stubber.add_client_error("send_email", service_error_code=code, service_message="nope",
                             http_status_code=http_status)
    [outcome] = SesTransport(client).send_batch([mail(1, "k:1")])
    assert outcome.status == status and outcome.reason == f"ses {code}: nope"
