"""Subscribe to reorder: the replenishment mail's link, a GET that changes nothing, one POST
that records the click once and sends the customer on to the store's subscription product.

In-process (the edge's own app and pages over ASGI) with a config that names a subscription
product; the shipped config leaves the offer off.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from flows import pages
from tasks.aftercare.followups import replenishment
from tasks.config import load_config
from tasks.links import Purpose, link_url
from tasks.messaging.render import renderer_for
from tasks.runtime import Runtime
from tasks.settings import Settings
from tasks.store.db import make_engine, session_scope
from tasks.store.migrate import ensure_schema
from tasks.store.models import Message, OrderEvent, Product
from tests.conftest import ROOT
from tests.factories import add_catalog, add_order

NOW = datetime.now(UTC).replace(microsecond=0)  # tokens are read on the page's clock
BASE = "http://testserver"
STORE = "https://northwind.example/products/{sku}?subscribe=every-{weeks}-weeks"


def configured():
    cfg = load_config.__wrapped__(ROOT / "configs")
    after = cfg.aftercare
    return cfg.model_copy(update={
        "store": cfg.store.model_copy(update={"links_base_url": BASE}),
        "aftercare": after.model_copy(update={"replenishment": after.replenishment.model_copy(
            update={"subscription_url": STORE})})})


def test_replenishment_offers_a_subscription_and_the_click_is_recorded_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'journeys.db'}"
    engine, cfg = make_engine(url), configured()
    ensure_schema(engine)
    rt = Runtime(settings=Settings(database_url=url, secret_key="s" * 32), config=cfg)
    with session_scope(engine) as session:
        add_catalog(session, NOW)
        session.scalars(select(Product).where(Product.sku == "COF-1")).one().attributes = {
            "consumable_days": 28}
        order = add_order(session, NOW, lines=[("COF-1", 1, "14.00")], state="delivered",
                          step="replenishment", delivered_at=NOW - timedelta(days=30))
        order_id = order.id
    with session_scope(engine) as session:
        replenishment(session, [order_id], NOW, rt)
        [mail] = session.scalars(select(Message)).all()
    offer = mail.context["subscription"]
    assert offer["weeks"] == 4 and offer["url"].startswith(f"{BASE}/s/")
    assert offer["url"] in renderer_for(cfg).render(mail.template, mail.context).text

    app = FastAPI()
    pages.mount(app, cfg, rt.settings.secret_key, url, clock=lambda: NOW)
    client = TestClient(app)
    path = offer["url"].removeprefix(BASE)
    assert [client.request(m, path).status_code for m in ("HEAD", "GET")] == [200, 200]
    assert "every 4 weeks" in client.get(path).text
    forged = client.post(path, data={"action": "subscribe"},
                         headers={"Origin": "https://evil.example"})
    odd = client.post(path, data={"action": "other"})
    answers = [client.post(path, data={"action": "subscribe"}, follow_redirects=False)
               for _ in range(2)]
    order_token = link_url(BASE, rt.settings.secret_key, Purpose.ORDER, order_id, NOW)
    not_a_line = client.get(order_token.removeprefix(BASE).replace("/o/", "/s/"))
    with session_scope(engine) as session:
        clicks = session.scalars(select(OrderEvent.detail).where(
            OrderEvent.kind == "subscription_click")).all()
    assert (forged.status_code, odd.status_code, not_a_line.status_code) == (403, 400, 404)
    assert [a.status_code for a in answers] == [303, 303]
    assert answers[0].headers["location"] == STORE.format(sku="COF-1", weeks=4)
    assert clicks == [{"sku": "COF-1", "weeks": 4}]  # once, however often it is pressed
    engine.dispose()
