"""SES bounces and complaints: SNS-signed over real HTTP, drained into suppressions, obeyed.

One edge process (SQLite) serves the module. It trusts a throwaway certificate made here
(JOURNEYS_SNS_CERTIFICATES: the folder read instead of fetching from AWS); everything else, the
URL rules, the string to sign, SHA1/SHA256 with RSA, is the code that runs against AWS. The
bodies inside the SNS envelopes are AWS's published SES examples (tests/fixtures/real_ses).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from typer.testing import CliRunner

import tasks.quality.gate  # noqa: F401  (the CLI's error wrapper imports it: pandas, once)
from flows import common
from flows.cli import app
from tasks import inbox
from tasks.messaging.governor import email_hash, govern
from tasks.messaging.outbox import claim_due_messages, enqueue, message_id_for
from tasks.settings import get_settings
from tasks.store.db import make_engine, session_scope
from tasks.store.migrate import ensure_schema
from tasks.store.models import InboxDelivery, Message, Suppression
from tests.conftest import FIXTURES, NOW
from tests.edge_process import running_edge

SES = FIXTURES / "real_ses"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CERT_HOST = "sns.us-east-1.amazonaws.com"
CERT_URL = f"https://{CERT_HOST}/SimpleNotificationService-0000test.pem"
DAYTIME = datetime(2026, 11, 18, 20, 0, tzinfo=UTC)  # outside the store's quiet hours
CONTEXT = json.loads((FIXTURES / "golden" / "confirmation_context.json").read_text())


def ses_example(name: str, **bounce) -> str:
    data = json.loads((SES / name).read_text())
    data.get("bounce", {}).update(bounce)
    return json.dumps(data)


# --- signing as SNS does (the string to sign is spelled out here, as AWS documents it) --------


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed(key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM)


def signed(key, envelope: dict, version: str = "1") -> dict:
    """The envelope with SignatureVersion, SigningCertURL and Signature as SNS adds them."""
    if envelope["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    text = "".join(f"{n}\n{envelope[n]}\n" for n in names if n in envelope)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text.encode(), padding.PKCS1v15(), algorithm)
    return {"SigningCertURL": CERT_URL, **envelope, "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode()}


def notification(message_id: str, message: str, **extra) -> dict:
    return {"Type": "Notification", "MessageId": message_id, "TopicArn": TOPIC,
            "Message": message, "Timestamp": "2016-01-27T14:59:38.300Z",
            "UnsubscribeURL": f"https://{CERT_HOST}/?Action=Unsubscribe&SubscriptionArn=x",
            **extra}


def deliveries(key) -> dict[str, dict]:
    """MessageId → signed envelope: SV1 and SV2, with and without Subject."""
    return {
        "sns-bounce": signed(key, notification("sns-bounce", ses_example("bounce_with_dsn.json"))),
        "sns-complaint": signed(key, notification(
            "sns-complaint", ses_example("complaint_with_feedback.json"),
            Subject="Amazon SES Email Event Notification"), "2"),
        "sns-transient": signed(key, notification(
            "sns-transient", ses_example("bounce_without_dsn.json", bounceType="Transient")), "2"),
        "sns-delivery": signed(key, notification("sns-delivery", ses_example("delivery.json"))),
        "sns-confirm": signed(key, {
            "Type": "SubscriptionConfirmation", "MessageId": "sns-confirm", "Token": "tok123",
            "TopicArn": TOPIC, "Timestamp": "2016-01-27T14:00:00.000Z",
            "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the "
                       "subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": f"https://{CERT_HOST}/?Action=ConfirmSubscription&Token=tok123"}, "2"),
    }


# --- the edge --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edge(tmp_path_factory, key):
    workdir = tmp_path_factory.mktemp("ses-edge")
    trusted = workdir / "sns-certificates" / CERT_HOST
    trusted.mkdir(parents=True)
    (trusted / CERT_URL.rsplit("/", 1)[1]).write_bytes(self_signed(key))
    env = {"JOURNEYS_SNS_CERTIFICATES": str(workdir / "sns-certificates"),
           "JOURNEYS_SNS_TOPIC_ARNS": TOPIC}
    with running_edge(f"sqlite:///{workdir / 'journeys.db'}", workdir, env) as running:
        running.inbox_url = f"sqlite:///{workdir / 'inbox.db'}"
        yield running


def post(edge, envelope: dict | bytes) -> int:
    body = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    headers = {"Content-Type": "text/plain; charset=UTF-8",
               "x-amz-sns-message-type": "Notification"}
    return httpx.post(f"{edge.url}/webhooks/ses", content=body, headers=headers,
                      timeout=10).status_code


def stored(edge) -> dict[str, InboxDelivery]:
    engine = make_engine(edge.inbox_url)
    try:
        with session_scope(engine) as session:
            rows = session.scalars(select(InboxDelivery).where(InboxDelivery.provider == "ses"))
            return {row.delivery_id: row for row in rows}
    finally:
        engine.dispose()


def test_signed_notifications_are_stored_once_by_message_id(edge, key):
    sent = deliveries(key)
    assert [post(edge, envelope) for envelope in sent.values()] == [200] * len(sent)
    assert post(edge, sent["sns-bounce"]) == 200  # SNS's retry: same MessageId
    rows = stored(edge)
    assert {mid: rows[mid].topic for mid in sent} == {
        "sns-bounce": "Bounce", "sns-complaint": "Complaint", "sns-transient": "Bounce",
        "sns-delivery": "Delivery", "sns-confirm": "SubscriptionConfirmation"}
    assert json.loads(rows["sns-complaint"].body) == sent["sns-complaint"]
    assert "Action=ConfirmSubscription&Token=tok123" in edge.log_text()  # for the operator


def tampered(key) -> dict:
    envelope = deliveries(key)["sns-bounce"]
    return envelope | {"MessageId": "bad-tampered",
                       "Message": envelope["Message"].replace("jane@", "ceo@")}


@pytest.mark.parametrize("case", ["tampered", "other host", "http", "userinfo", "other topic",
                                  "version 3", "not json", "unsigned"])
def test_what_sns_did_not_sign_gets_401_and_is_not_stored(edge, key, case):
    good = signed(key, notification(f"bad-{case}", ses_example("bounce_with_dsn.json")))
    envelope = {
        "tampered": tampered(key),
        "other host": good | {"SigningCertURL": "https://sns.us-east-1.amazonaws.com.evil.example"
                                                "/SimpleNotificationService-0000test.pem"},
        "http": good | {"SigningCertURL": CERT_URL.replace("https:", "http:")},
        "userinfo": good | {"SigningCertURL": CERT_URL.replace("https://", "https://a@")},
        "other topic": signed(key, notification("bad-other topic", good["Message"],
                                                TopicArn=TOPIC + "-other")),
        "version 3": good | {"SignatureVersion": "3"},
        "not json": b"jane@example.com is not an SNS message",
        "unsigned": {k: v for k, v in good.items() if k != "Signature"},
    }[case]
    assert post(edge, envelope) == 401
    assert not any(mid.startswith("bad-") for mid in stored(edge))
    assert "ceo@" not in edge.log_text() and "5.1.1" not in edge.log_text()


# --- the drain and the governor ----------------------------------------------------------------


def test_the_drain_writes_the_suppressions_and_the_governor_obeys(edge, key, runtime, tmp_path):
    for envelope in deliveries(key).values():
        assert post(edge, envelope) == 200  # stored already by the first test, or now
    inbox_engine, app = make_engine(edge.inbox_url), make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    ensure_schema(app)
    first = inbox.drain(inbox_engine, app, NOW, runtime)
    again = inbox.drain(inbox_engine, app, NOW, runtime)
    with session_scope(app) as session:
        suppressions = {(s.email_hash, s.reason) for s in session.scalars(select(Suppression))}
        held = governed(session, [("jane@example.com", "transactional"),
                                  ("richard@example.com", "marketing"),
                                  ("richard@example.com", "transactional")], runtime)
    rows = stored(edge)
    inbox_engine.dispose()
    app.dispose()

    assert suppressions == {(email_hash("jane@example.com"), "bounce"),
                            (email_hash("richard@example.com"), "complaint")}
    assert (first.outcomes["processed"], first.outcomes["ignored"], again.taken) == (2, 3, 0)
    assert (rows["sns-bounce"].status, rows["sns-bounce"].reason) == (
        "processed", "bounce: 1 suppressed, 0 already suppressed")
    assert (rows["sns-transient"].status, rows["sns-transient"].reason) == (
        "ignored", "transient bounce: not suppressed")
    assert rows["sns-delivery"].reason == "topic Delivery is not acted on"
    assert held == {("jane@example.com", "transactional"): "suppressed: bounce",
                    ("richard@example.com", "marketing"): "suppressed: complaint"}


def governed(session, recipients: list[tuple[str, str]], rt) -> dict[tuple[str, str], str]:
    """(address, class) → why the governor held that message (admitted ones are absent)."""
    rows = []
    for number, (address, msg_class) in enumerate(recipients):
        key = f"ses-test:{number}"
        rows.append({"effect_key": key, "order_id": None, "customer_id": None,
                     "template": "confirmation", "version": 1, "msg_class": msg_class,
                     "priority": 50, "to_addr": address, "context": CONTEXT,
                     "message_id": message_id_for(key, "northwind.example"),
                     "not_before": DAYTIME})
    enqueue(session, rows, NOW)
    decision = govern(session, claim_due_messages(session, DAYTIME, 100), DAYTIME, rt)
    names = {m.id: (m.to_addr, m.msg_class) for m in session.scalars(select(Message))}
    return {names[v.row_id]: v.reason for v in decision.held}


# --- a provider's list through the CLI ---------------------------------------------------------


def test_ingest_bounces_suppresses_the_good_rows_and_reports_the_bad_one(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'journeys.db'}"
    monkeypatch.setenv("JOURNEYS_DATABASE_URL", url)
    monkeypatch.setenv("JOURNEYS_SECRET_KEY", "test-secret")
    listed = tmp_path / "suppressions.csv"
    listed.write_text("email,type,reason\n"
                      "Jane@Example.com,bounce,550 5.1.1 user unknown\n"
                      "richard@example.com,complaint,\n"
                      "not-an-address,bounce,\n"
                      "jane@example.com,complaint,named again\n")
    runner = CliRunner()
    get_settings.cache_clear()
    common.runtime.cache_clear()
    try:
        first = runner.invoke(app, ["ingest", "bounces", str(listed), "--json"])
        again = runner.invoke(app, ["ingest", "bounces", str(listed)])
    finally:
        get_settings.cache_clear()
        common.runtime.cache_clear()
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == {
        "received": 4, "suppressed": 2, "already suppressed": 1, "rejected": 1,
        "rejected_rows": [{"line": 4, "reason": "email missing or not an address"}]}
    assert again.exit_code == 0 and "line 4: email missing or not an address" in again.stdout
    engine = make_engine(url)
    with session_scope(engine) as session:
        rows = {(s.email_hash, s.reason, s.source) for s in session.scalars(select(Suppression))}
    engine.dispose()
    assert rows == {
        (email_hash("jane@example.com"), "bounce", "list suppressions.csv: 550 5.1.1 user unknown"),
        (email_hash("richard@example.com"), "complaint", "list suppressions.csv")}


# --- in-process: the certificate cache and the suppression writer ------------------------------


def test_a_certificate_is_read_once_and_urls_off_aws_never(key):
    from tasks import sns

    reads: list[str] = []
    pem = self_signed(key)
    certificates = sns.Certificates(lambda url: reads.append(url) or pem)
    envelope = deliveries(key)["sns-bounce"]
    for _ in range(3):
        sns.verified(json.dumps(envelope).encode(), certificates, (), datetime.now(UTC))
    assert reads == [CERT_URL]
    for url in ("https://sns.us-east-1.amazonaws.com.cn/x.pem", "https://s3.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com:8443/x.pem",
                "https://sns.us-east-1.amazonaws.com/../x.pem"):
        with pytest.raises(sns.Refused):
            sns.verified(json.dumps(envelope | {"SigningCertURL": url}).encode(), certificates,
                         (), datetime.now(UTC))
    assert reads == [CERT_URL]


def test_stronger_reasons_replace_weaker_ones_and_erased_addresses_stay_keyed(engine):
    from tasks.messaging.bounces import ALREADY, SUPPRESSED, Entry, suppress_entries
    from tasks.messaging.unsubscribe import suppress
    from tasks.privacy import suppress_erased

    with session_scope(engine) as session:
        suppress(session, "unsub@example.com", "unsubscribe", NOW, "link")
        suppress_erased(session, ["erased@example.com"], NOW, "test", "test-secret")
        outcome = suppress_entries(session, [
            Entry("unsub@example.com", "complaint", "ses"),
            Entry("erased@example.com", "bounce", "ses"),
            Entry("new@example.com", "complaint", "ses"),
            Entry("new@example.com", "bounce", "ses"),
        ], NOW, "test-secret")
        again = suppress_entries(session, [Entry("new@example.com", "complaint", "ses")], NOW,
                                 "test-secret")
        rows = {(s.email_hash, s.reason) for s in session.scalars(select(Suppression))}
    assert outcome == {"unsub@example.com": SUPPRESSED, "erased@example.com": ALREADY,
                       "new@example.com": SUPPRESSED}
    assert again == {"new@example.com": ALREADY}
    assert rows == {(email_hash("unsub@example.com"), "complaint"),
                    (email_hash("new@example.com"), "bounce"), (None, "erasure")}
