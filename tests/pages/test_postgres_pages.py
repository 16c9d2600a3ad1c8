"""Every customer page against PostgreSQL: an edge over the session's PostgreSQL database serves
each page (GETs through READ ONLY transactions) and records a survey answer and a one-click
unsubscribe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, select

from tasks.links import Purpose, link_url
from tasks.store.db import make_engine, session_scope
from tasks.store.models import FeedbackResponse, OrderLine, Suppression
from tests.conftest import _truncate_all
from tests.edge_process import running_edge
from tests.factories import add_catalog, add_order

SECRET = "pages-pg-secret"


def seeded(engine, now: datetime) -> dict[str, int]:
    _truncate_all(engine)
    with session_scope(engine) as session:
        add_catalog(session, now)
        order = add_order(session, now, lines=[("MUG-1", 1, "18.00")], state="delivered",
                          step=None, delivered_at=now - timedelta(days=1))
        line = session.scalar(select(OrderLine.id).where(OrderLine.order_id == order.id))
        return {"order": order.id, "customer": order.customer_id, "line": line}


def count(engine, model) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def test_every_page_reads_and_records_on_postgresql(pg_url, tmp_path):
    now = datetime.now(UTC)
    engine = make_engine(pg_url)
    ids = seeded(engine, now)
    with running_edge(pg_url, tmp_path, {"JOURNEYS_SECRET_KEY": SECRET}) as edge:
        def url(purpose: Purpose, subject: int, extra: int = 0) -> str:
            return link_url(edge.url, SECRET, purpose, subject, now, extra)

        pages = [url(Purpose.ORDER, ids["order"]), url(Purpose.FEEDBACK, ids["order"]) + "?r=5",
                 url(Purpose.REVIEW, ids["order"], ids["line"]),
                 url(Purpose.PREFERENCES, ids["customer"]),
                 url(Purpose.LOYALTY, ids["customer"])]
        for page in pages:
            answer = httpx.get(page, timeout=15)
            assert answer.status_code == 200, (page, answer.text[-500:])
        assert count(engine, FeedbackResponse) == 0  # the GETs recorded nothing
        survey = httpx.post(url(Purpose.FEEDBACK, ids["order"]), timeout=15,
                            data={"rating": "5"}, headers={"Sec-Fetch-Site": "same-origin"})
        one_click = httpx.post(url(Purpose.PREFERENCES, ids["customer"]), timeout=15,
                               data={"List-Unsubscribe": "One-Click"})
    assert survey.status_code == 200, survey.text[-500:]
    assert one_click.status_code == 200 and "unsubscribed" in one_click.text
    assert (count(engine, FeedbackResponse), count(engine, Suppression)) == (1, 1)
    engine.dispose()
