"""The edge over real HTTP: signatures, replays, limits, storage failures and a SIGKILL.

One edge process (SQLite) serves the module; the PostgreSQL test starts its own to take its
database away. Deliveries are checked in the inbox table and drained into intake.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from tasks import inbox
from tasks.settings import Settings
from tasks.store.db import make_engine, session_scope
from tasks.store.models import InboxDelivery, Order
from tests.conftest import FIXTURES, NOW
from tests.edge_process import (
    SHOPIFY_PREVIOUS,
    Edge,
    aftership_headers,
    running_edge,
    shopify_headers,
)

ORDER_LINES = (FIXTURES / "orders_shopify.jsonl").read_text().splitlines()
EVENT = (FIXTURES / "tracking_aftership.jsonl").read_text().splitlines()[0].encode()


def order_body(index: int = 0, **changes) -> bytes:
    data = json.loads(ORDER_LINES[index]) | changes
    return json.dumps(data).encode()


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("edge")
    with running_edge(f"sqlite:///{workdir / 'journeys.db'}", workdir) as running:
        running.inbox_url = f"sqlite:///{workdir / 'inbox.db'}"
        yield running


def inbox_rows(url: str) -> list:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            return list(session.execute(select(InboxDelivery).order_by(InboxDelivery.id))
                        .scalars())
    finally:
        engine.dispose()


def post(edge: Edge, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{edge.url}{path}", content=body, headers=headers, timeout=10)


def test_a_signed_delivery_is_stored_once_however_often_it_is_sent(edge):
    body = order_body(0)
    headers = shopify_headers(body, "orders/create", "wh-once")
    answers = [post(edge, "/webhooks/shopify", body, headers).status_code for _ in range(3)]
    assert answers == [200, 200, 200]
    rows = [r for r in inbox_rows(edge.inbox_url) if r.delivery_id == "wh-once"]
    assert len(rows) == 1
    row = rows[0]
    assert (row.provider, row.topic, row.body, row.event_id, row.shop) == (
        "shopify", "orders/create", body, "event-wh-once", "journeys-test.myshopify.com")
    assert row.status == "pending" and row.triggered_at is not None


def test_header_names_are_case_insensitive_and_the_previous_secret_still_counts(edge):
    body = order_body(1)
    headers = {k.lower(): v for k, v in
               shopify_headers(body, "orders/updated", "wh-old", SHOPIFY_PREVIOUS).items()}
    assert post(edge, "/webhooks/shopify", body, headers).status_code == 200
    assert any(r.delivery_id == "wh-old" for r in inbox_rows(edge.inbox_url))


@pytest.mark.parametrize("change", ["missing", "wrong secret", "body changed", "not base64"])
def test_a_missing_or_wrong_signature_gets_401_and_nothing_is_stored(edge, change):
    body = order_body(2)
    headers = shopify_headers(body, "orders/create", f"wh-bad-{change}",
                              "not-the-secret" if change == "wrong secret" else "shpss_test_secret")
    if change == "missing":
        del headers["X-Shopify-Hmac-Sha256"]
    if change == "not base64":
        headers["X-Shopify-Hmac-Sha256"] = "§§§".encode("latin-1")  # type: ignore[assignment]
    sent = body + b" " if change == "body changed" else body
    answer = post(edge, "/webhooks/shopify", sent, headers)
    assert answer.status_code == 401
    assert not any(r.delivery_id.startswith("wh-bad") for r in inbox_rows(edge.inbox_url))
    assert "Ava" not in edge.log_text()  # the refused body is never logged


def test_aftership_deliveries_are_keyed_by_their_event_id(edge):
    headers = aftership_headers(EVENT)
    assert post(edge, "/webhooks/aftership", EVENT, headers).status_code == 200
    assert post(edge, "/webhooks/aftership", EVENT, headers).status_code == 200
    unsigned = {"Content-Type": "application/json"}
    assert post(edge, "/webhooks/aftership", EVENT, unsigned).status_code == 401
    rows = [r for r in inbox_rows(edge.inbox_url) if r.provider == "aftership"]
    assert [(r.delivery_id, r.topic) for r in rows] == [("evt-001", "tracking_update")]


def test_other_methods_oversize_bodies_and_health(edge):
    assert httpx.get(f"{edge.url}/webhooks/shopify").status_code == 405
    assert httpx.put(f"{edge.url}/webhooks/aftership", content=b"{}").status_code == 405
    big = b"{" + b" " * (1024 * 1024) + b"}"
    answer = post(edge, "/webhooks/shopify", big, shopify_headers(big, "orders/create", "big"))
    assert answer.status_code == 413
    assert httpx.get(f"{edge.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{edge.url}/readyz").json() == {"status": "ready"}
    assert httpx.get(f"{edge.url}/docs").status_code == 404  # no API explorer on the edge


def test_refused_requests_are_rate_limited_per_client_but_signed_ones_never(edge):
    body = order_body(2)
    bad = shopify_headers(body, "orders/create", "wh-limit", "guess")
    codes = [post(edge, "/webhooks/shopify", body, bad).status_code for _ in range(70)]
    assert codes.count(429) > 0 and set(codes) == {401, 429}
    good = shopify_headers(body, "orders/create", "wh-after-limit")
    assert post(edge, "/webhooks/shopify", body, good).status_code == 200


def test_the_drain_takes_deliveries_into_intake_once(edge, runtime, tmp_path):
    """What the sweep does first: stored deliveries become orders; a rerun changes nothing."""
    inbox_engine = make_engine(edge.inbox_url)
    app = make_engine(f"sqlite:///{tmp_path / 'app.db'}")
    from tasks.store.migrate import ensure_schema
    ensure_schema(app)
    first = inbox.drain(inbox_engine, app, NOW, runtime)
    again = inbox.drain(inbox_engine, app, NOW, runtime)
    with session_scope(app) as session:
        orders = session.scalar(select(func.count()).select_from(Order))
    assert first.outcomes["processed"] == 3
    assert again.taken == 1 and again.outcomes == {"waiting": 1}  # only the waiting row again
    # wh-once, wh-old and wh-after-limit are three orders; the AfterShip event waits for its
    # parcel (refused deliveries were never stored).
    assert orders == 3 and first.outcomes["waiting"] == 1
    inbox_engine.dispose()
    app.dispose()


def test_a_sigkilled_edge_loses_no_acknowledged_delivery(tmp_path):
    """Deliveries in flight while the edge is SIGKILLed: every 200 is in the inbox after the
    restart; the senders retry the rest (as Shopify does) and each is stored once."""
    url = f"sqlite:///{tmp_path / 'journeys.db'}"
    edge = Edge(url, tmp_path).start()
    bodies = {f"wh-kill-{n}": order_body(n % len(ORDER_LINES), id=900_000 + n)
              for n in range(120)}
    acknowledged: set[str] = set()
    lock = threading.Lock()

    def send(webhook_id: str) -> None:
        body = bodies[webhook_id]
        try:
            answer = post(edge, "/webhooks/shopify", body,
                          shopify_headers(body, "orders/create", webhook_id))
        except httpx.HTTPError:
            return
        if answer.status_code == 200:
            with lock:
                acknowledged.add(webhook_id)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, webhook_id) for webhook_id in bodies]
        while len(acknowledged) < 30:
            threading.Event().wait(0.01)
        edge.kill()
        for future in futures:
            future.result()
    inbox_url = f"sqlite:///{tmp_path / 'inbox.db'}"
    stored = {r.delivery_id for r in inbox_rows(inbox_url)}
    assert acknowledged <= stored and len(acknowledged) < len(bodies)
    edge.start()
    try:
        for webhook_id in sorted(set(bodies) - acknowledged):  # the providers' retries
            send(webhook_id)
        send("wh-kill-0")
    finally:
        edge.stop()
    rows = inbox_rows(inbox_url)
    assert sorted(r.delivery_id for r in rows) == sorted(bodies)


@pytest.mark.parametrize("point", ["edge:before_commit", "edge:after_commit"])
def test_an_edge_killed_at_its_commit_stores_every_delivery_once(tmp_path, point):
    """The fault points around the inbox commit: killed before it, the delivery is not stored
    and not acknowledged; killed after it, stored but not acknowledged. Either way the sender's
    retry after the restart leaves it stored exactly once."""
    edge = Edge(f"sqlite:///{tmp_path / 'journeys.db'}", tmp_path,
                {"JOURNEYS_FAULT": f"{point}@3:kill"}).start()
    bodies = {f"wh-fault-{n}": order_body(0, id=600_000 + n) for n in range(5)}
    answers = {}
    for webhook_id, body in bodies.items():
        try:
            answers[webhook_id] = post(edge, "/webhooks/shopify", body, shopify_headers(
                body, "orders/create", webhook_id)).status_code
        except httpx.HTTPError:
            answers[webhook_id] = "no answer"
            break
    inbox_url = f"sqlite:///{tmp_path / 'inbox.db'}"
    before = {r.delivery_id for r in inbox_rows(inbox_url)}
    assert answers == {"wh-fault-0": 200, "wh-fault-1": 200, "wh-fault-2": "no answer"}
    assert ("wh-fault-2" in before) == (point == "edge:after_commit")
    edge.env.pop("JOURNEYS_FAULT")
    edge.start()
    try:
        for webhook_id, body in bodies.items():
            if answers.get(webhook_id) != 200:  # what a provider retries
                assert post(edge, "/webhooks/shopify", body, shopify_headers(
                    body, "orders/create", webhook_id)).status_code == 200
    finally:
        edge.stop()
    assert sorted(r.delivery_id for r in inbox_rows(inbox_url)) == sorted(bodies)


def test_a_database_that_is_down_answers_503_and_the_retry_is_stored(pg_url, tmp_path):
    """PostgreSQL refuses connections → 503 (the sender retries), never a 200 for nothing."""
    name = make_url(pg_url).database
    admin = create_engine(make_url(pg_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    body = order_body(0, id=777_001)
    headers = shopify_headers(body, "orders/create", "wh-down")
    with running_edge(pg_url, tmp_path) as edge, admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        try:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
            assert post(edge, "/webhooks/shopify", body, headers).status_code == 503
            assert httpx.get(f"{edge.url}/readyz").status_code == 503
        finally:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        assert post(edge, "/webhooks/shopify", body, headers).status_code == 200
    rows = [r for r in inbox_rows(pg_url) if r.delivery_id == "wh-down"]
    assert len(rows) == 1
    admin.dispose()


def test_the_inbox_sits_beside_a_sqlite_database_and_inside_postgresql():
    sqlite = Settings(database_url="sqlite:////srv/journeys/var/journeys.db")
    assert inbox.inbox_url(sqlite) == "sqlite:////srv/journeys/var/inbox.db"
    pg = Settings(database_url="postgresql://u@db/journeys")
    assert inbox.inbox_url(pg) == "postgresql://u@db/journeys"
    own = Settings(database_url="sqlite:///a.db", inbox_url="postgresql://u@db/inbox")
    assert inbox.inbox_url(own) == "postgresql://u@db/inbox"


# What a store's Shopify sends over a day, in the order it happens.
TOPIC_ORDER = ("products/create", "products/update", "customers/create", "customers/update",
               "orders/create", "orders/paid", "orders/updated", "order_transactions/create",
               "fulfillments/create", "fulfillments/update", "refunds/create", "orders/cancelled",
               "customers/data_request")
REAL = FIXTURES / "real" / "shopify"


def test_every_published_shopify_body_lands_through_the_edge(tmp_path, runtime, figure):
    """Shopify's own example bodies (tests/fixtures/real/SOURCES.md), posted as webhooks to a
    running edge, drained, then verified, packed, confirmed and mailed: every delivery ends
    with an outcome and a reason, orders without e-mail are stored, and mail keeps flowing.
    (shop/redact and customers/redact erase; they are tested in test_privacy_requests.py.)"""
    from tasks.confirm import confirm
    from tasks.messaging.outbox import dispatch
    from tasks.pack import pack
    from tasks.store.journal import due_order_ids
    from tasks.store.models import Message, Quarantine
    from tasks.verify import verify

    url = runtime.settings.database_url
    sent = []
    with running_edge(url, tmp_path) as edge:
        for topic in TOPIC_ORDER:
            for path in sorted((REAL / topic.replace("/", "__")).glob("*.json")):
                body = path.read_bytes()
                answer = post(edge, "/webhooks/shopify", body,
                              shopify_headers(body, topic, f"real-{path.stem}"))
                assert answer.status_code == 200, (path, answer.text)
                sent.append(path.stem)
    app, inbox_engine = make_engine(url), make_engine(inbox.inbox_url(runtime.settings))
    result = inbox.drain(inbox_engine, app, NOW, runtime)
    for stage in (verify, pack, confirm):
        with session_scope(app) as session:
            stage(session, due_order_ids(session, stage.__name__, NOW, 1000), NOW, runtime)
    with session_scope(app) as session:
        mail = dispatch(session, NOW, runtime)
    rows = inbox_rows(inbox.inbox_url(runtime.settings))
    with session_scope(app) as session:
        no_email = session.scalars(select(Order.state).where(Order.email.is_(None))).all()
        reasons = [r["reason"] for q in session.scalars(select(Quarantine)) for r in q.reasons]
        sending = session.scalar(select(func.count()).select_from(Message).where(
            Message.status == "sending"))
    statuses = {r.status for r in rows}
    assert len(rows) == len(sent) and statuses <= {"processed", "quarantined", "ignored",
                                                   "pending"}
    assert all(r.reason for r in rows if r.status in ("ignored", "pending"))
    assert len(no_email) >= 2  # the POS-like and no-customer orders are stored
    assert any("control character" in reason for reason in reasons)  # "#☠1☢\n---\n4321\n"
    assert sending == 0 and mail.as_dict()["failed"] == 0
    by_status = {s: sum(r.status == s for r in rows) for s in sorted(statuses)}
    figure(f"real Shopify bodies through the edge: {len(rows)} deliveries of "
           f"{len(TOPIC_ORDER)} topics → {by_status}; orders without e-mail stored "
           f"{len(no_email)}; mail {mail.as_dict()}; drained {result.as_dict()['taken']}")
    app.dispose()
    inbox_engine.dispose()
