"""reconcile-shopify against a local HTTP server replaying recorded-shape Admin API responses.

Shopify itself is not reachable from tests: the server below speaks the GraphQL endpoint's
protocol (token header, THROTTLED errors with the cost extension, 429 with Retry-After) from
the files in tests/fixtures/real_shopify_graphql (SOURCES.md names the pages they follow).
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from flows.parameters import ReconcileRequest
from tasks import shopify_admin
from tasks.store.db import session_scope
from tasks.store.models import InboxDelivery, Order
from tests.conftest import FIXTURES

RECORDED = FIXTURES / "real_shopify_graphql"
TOKEN = "shpat_test_token"
SEARCH = re.compile(r"updated_at:>'([^']+)'")


def recorded(name: str) -> dict:
    return json.loads((RECORDED / name).read_text())


class FakeShopify(BaseHTTPRequestHandler):
    """POST /admin/api/2025-07/graphql.json: pages of the current `state`, filtered by the
    query's updated_at, after a scripted THROTTLED or 429 where `faults` says so."""

    state = "before"
    faults: dict = {}
    seen: list = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/admin/api/2025-07/graphql.json"
        assert self.headers["X-Shopify-Access-Token"] == TOKEN
        variables = body["variables"]
        self.seen.append(variables)
        fault = self.faults.pop((self.state, variables["after"]), None)
        if fault == 429:
            return self.reply(429, recorded("rate_limited_429.json"), {"Retry-After": "1"})
        if fault == "throttled":
            return self.reply(200, recorded("throttled.json"))
        self.reply(200, self.page(variables))

    def page(self, variables: dict) -> dict:
        name = {("before", None): "orders_page_1.json",
                ("before", page_1_cursor()): "orders_page_2.json",
                ("after", None): "orders_page_3.json"}[(self.state, variables["after"])]
        response = recorded(name)
        since = SEARCH.search(variables["query"]).group(1)
        connection = response["data"]["orders"]
        connection["nodes"] = [n for n in connection["nodes"] if n["updatedAt"] > since]
        return response

    def reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def page_1_cursor() -> str:
    return recorded("orders_page_1.json")["data"]["orders"]["pageInfo"]["endCursor"]


class Clock:
    """A clock that moves only when the client sleeps: waits are exact and cost no time."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def shopify(flow_env, engine, monkeypatch):
    """The fake Admin API on loopback, the settings pointing at it, and the injected clock."""
    from flows import reconcile

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeShopify)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("JOURNEYS_SHOPIFY_SHOP", "example.myshopify.com")
    monkeypatch.setenv("JOURNEYS_SHOPIFY_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("JOURNEYS_SHOPIFY_ADMIN_URL", f"http://127.0.0.1:{server.server_port}")
    clock = Clock()
    monkeypatch.setattr(reconcile, "admin_client", lambda: shopify_admin.AdminClient.from_settings(
        reconcile.runtime().settings, clock=clock, sleep=clock.sleep))
    FakeShopify.state, FakeShopify.seen = "before", []
    FakeShopify.faults = {("before", None): "throttled", ("before", page_1_cursor()): 429}
    yield reconcile, clock
    server.shutdown()
    server.server_close()


def inbox_ids() -> list[str]:
    """Delivery ids in the inbox (beside SQLite, a database of its own)."""
    from flows.reconcile import inbox_db

    with session_scope(inbox_db()) as session:
        return sorted(session.scalars(select(InboxDelivery.delivery_id)))


def shopify_orders(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(Order).where(
            Order.source == "shopify"))


def test_pages_throttling_watermark_and_reruns(shopify, engine):
    reconcile, clock = shopify
    first = reconcile.reconcile_shopify(
        ReconcileRequest(since=datetime(2026, 11, 18, tzinfo=UTC), page_size=2))

    assert [v["after"] for v in FakeShopify.seen] == [None, None, page_1_cursor(),
                                                      page_1_cursor()]
    assert FakeShopify.seen[0]["query"] == "updated_at:>'2026-11-18T00:00:00Z'"
    # THROTTLED: (600 - 450) / 100 points/s; page 2 needs 600 of the 330 left: 2.7 s; 429: 1 s
    assert clock.sleeps == pytest.approx([1.5, 2.7, 1.0])
    assert (first["pages"], first["orders pulled"], first["deliveries stored"]) == (2, 3, 4)
    assert (first["throttle waits"], first["watermark before"]) == (3, "none")
    assert first["watermark after"] == "2026-11-18T09:30:00+00:00"
    assert first["inbox"]["intake"]["orders"]["accepted"] == 3
    assert first["inbox"]["waiting"] == 1  # the fulfillment waits for its order's confirmation
    assert shopify_orders(engine) == 3
    stored = inbox_ids()

    FakeShopify.state, FakeShopify.seen = "after", []
    second = reconcile.reconcile_shopify()  # from the watermark, less the 5-minute overlap

    assert FakeShopify.seen[0]["query"] == "updated_at:>'2026-11-18T09:25:00Z'"
    assert (second["orders pulled"], second["deliveries stored"]) == (3, 2)  # #1103 again
    assert second["watermark after"] == "2026-11-18T10:10:00+00:00"
    assert sorted(set(inbox_ids()) - set(stored)) == [
        "reconcile:5432100102:2026-11-18T10:05:00Z", "reconcile:5432100104:2026-11-18T10:10:00Z"]
    assert shopify_orders(engine) == 4
    assert clock.sleeps == pytest.approx([1.5, 2.7, 1.0])  # nothing throttled this time

    FakeShopify.seen = []
    third = reconcile.reconcile_shopify()

    assert FakeShopify.seen[0]["query"] == "updated_at:>'2026-11-18T10:05:00Z'"
    assert (third["orders pulled"], third["deliveries stored"]) == (1, 0)
    assert third["watermark after"] == third["watermark before"]
    assert len(inbox_ids()) == len(stored) + 2


def test_without_a_watermark_the_look_back_applies(sqlite_engine):
    now = datetime(2026, 11, 18, 10, tzinfo=UTC)
    with session_scope(sqlite_engine) as session:
        assert shopify_admin.since_when(session, now, timedelta(hours=72)) == now - timedelta(
            hours=72)
