"""The customer pages in a real browser (Debian's Chromium through Playwright), as a customer
meets them: a real mail delivered over SMTP, its link opened, the page used at 390 px and
1280 px (screenshots in test-artifacts/), axe-core's accessibility rules run on every page."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta
from email.policy import default as default_policy

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from sqlalchemy import func, select

from tasks.aftercare.feedback import feedback_request
from tasks.links import Purpose, link_url
from tasks.messaging.outbox import dispatch
from tasks.store.db import session_scope
from tasks.store.models import FeedbackResponse, OrderLine, Shipment, Suppression, TrackingEvent
from tests.browser import chromium, screenshot
from tests.factories import add_catalog, add_order
from tests.fixtures_smtp import HOST, ScriptedHandler, SmtpServer, free_port, serving

WIDTHS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 900}}
NOW = datetime.now(UTC).replace(microsecond=0)  # the edge reads tokens on the real clock


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def shop(pages_edge):
    """A delivered order with a parcel and its checkpoints, and its survey mail sent over SMTP."""
    with session_scope(pages_edge.engine) as session:
        add_catalog(session, NOW)
        order = add_order(session, NOW, lines=[("MUG-1", 2, "18.00"), ("TEE-1", 1, "25.00")],
                          state="delivered", step="feedback_request",
                          shipped_at=NOW - timedelta(days=3),
                          delivered_at=NOW - timedelta(days=1), accepts_marketing=True)
        parcel = Shipment(order_id=order.id, carrier="ups", tracking_number="1Z999AA10123456784",
                          tracking_url="https://www.ups.com/track?tracknum=1Z999AA10123456784",
                          status="Delivered", shipped_at=NOW - timedelta(days=3),
                          delivered_at=NOW - timedelta(days=1), created_at=NOW, updated_at=NOW)
        session.add(parcel)
        session.flush()
        for days, tag, message, place in ((3, "InTransit", "Departed facility", "Louisville, KY"),
                                          (1, "Delivered", "Delivered, front door",
                                           "Portland, OR")):
            session.add(TrackingEvent(event_id=f"ev-{days}", shipment_id=parcel.id, tag=tag,
                                      message=message, location=place,
                                      occurred_at=NOW - timedelta(days=days), received_at=NOW,
                                      applied=True))
        line = session.scalar(select(OrderLine.id).where(OrderLine.order_id == order.id))
        ids = {"order": order.id, "customer": order.customer_id, "line": line}
    return ids


@pytest.fixture(scope="module")
def smtp():
    with serving(ScriptedHandler(SmtpServer(host=HOST, port=free_port()))) as state:
        yield state


@pytest.fixture(scope="module")
def survey_mail(pages_edge, shop, smtp):
    """The survey stage and the dispatcher, the mail delivered to the SMTP test server."""
    smtp_server = smtp
    rt = pages_edge.rt
    rt = type(rt)(settings=rt.settings.model_copy(update={"mail_transport": smtp_server.url}),
                  config=rt.config)
    with session_scope(pages_edge.engine) as session:
        feedback_request(session, [shop["order"]], NOW, rt)
    with session_scope(pages_edge.engine) as session:
        assert dispatch(session, NOW, rt).sent == 1
    [received] = smtp_server.received
    return email.message_from_bytes(received.content, policy=default_policy)


def links_in(mail) -> list[str]:
    html = mail.get_body(("html",)).get_content()
    return re.findall(r'href="([^"]+)"', html)


def answers(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(FeedbackResponse))


def look(browser, url: str, name: str, status: int = 200) -> list[str]:
    """Open `url` at each width: a screenshot, no sideways scrolling, axe's violations.
    (Scripts are on only for axe: the pages themselves have none.)"""
    found = []
    for width, viewport in WIDTHS.items():
        context = browser.new_context(viewport=viewport, java_script_enabled=True)
        page = context.new_page()
        assert page.goto(url).status == status, url
        screenshot(page, f"page-{name}-{width}")
        overflow = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} scrolls sideways at {width}: {overflow} px"
        result = Axe().run(page)
        found += [f"{name}@{width}: {v['id']} ({v['impact']}) {v['help']}"
                  for v in result.response["violations"]]
        context.close()
    return found


def test_a_survey_link_from_a_real_mail_records_only_the_click(pages_edge, browser, survey_mail):
    five = [url for url in links_in(survey_mail) if "/f/" in url and url.endswith("r=5")]
    assert len(five) == 1 and five[0].startswith(pages_edge.url), links_in(survey_mail)
    for method in ("GET", "HEAD", "GET"):  # a scanner's prefetch and a preview
        assert httpx.request(method, five[0], timeout=10).status_code == 200
    assert answers(pages_edge.engine) == 0
    context = browser.new_context(viewport=WIDTHS["phone"], java_script_enabled=False)
    page = context.new_page()
    page.goto(five[0])
    assert page.locator("input[type=radio][value='5']").is_checked()
    page.locator("main form button[type=submit]").first.click()
    page.wait_for_load_state()
    screenshot(page, "page-survey-thanks-phone")
    context.close()
    assert answers(pages_edge.engine) == 1


def test_every_page_reads_well_on_a_phone_and_a_desktop_and_passes_axe(
        pages_edge, browser, shop):
    urls = {
        "order": link_url(pages_edge.url, pages_edge.secret, Purpose.ORDER, shop["order"], NOW),
        "survey": link_url(pages_edge.url, pages_edge.secret, Purpose.FEEDBACK, shop["order"],
                           NOW) + "?r=2",
        "review": link_url(pages_edge.url, pages_edge.secret, Purpose.REVIEW, shop["order"], NOW,
                           shop["line"]),
        "preferences": link_url(pages_edge.url, pages_edge.secret, Purpose.PREFERENCES,
                                shop["customer"], NOW),
        "rewards": link_url(pages_edge.url, pages_edge.secret, Purpose.LOYALTY, shop["customer"],
                            NOW),
        "returns": link_url(pages_edge.url, pages_edge.secret, Purpose.RETURNS, shop["order"],
                            NOW),
        "friendly": f"{pages_edge.url}/o/{'A' * 48}",
    }
    violations = []
    for name, url in urls.items():
        violations += look(browser, url, name, 404 if name == "friendly" else 200)
    assert violations == []


def test_a_button_pressed_in_the_browser_is_taken_as_our_own_form(pages_edge, browser, shop):
    """Chromium posts our form with `Origin: null` (no-referrer) and Sec-Fetch-Site
    same-origin: it must count as our own page, not as another site's."""
    url = link_url(pages_edge.url, pages_edge.secret, Purpose.PREFERENCES, shop["customer"], NOW)
    context = browser.new_context(viewport=WIDTHS["phone"], java_script_enabled=False)
    page = context.new_page()
    page.goto(url)
    page.get_by_role("button", name="Unsubscribe from all marketing").click()
    page.wait_for_load_state()
    assert "another website" not in page.content()
    context.close()
    with session_scope(pages_edge.engine) as session:
        assert session.scalar(select(func.count()).select_from(Suppression)) == 1


def test_a_return_started_in_the_browser_shows_its_rma_and_steps(pages_edge, browser, shop):
    """No script: pick a unit, a reason, send; the RMA and the steps at once, then the page
    with the return on it passes axe at both widths."""
    url = link_url(pages_edge.url, pages_edge.secret, Purpose.RETURNS, shop["order"], NOW)
    context = browser.new_context(viewport=WIDTHS["phone"], java_script_enabled=False)
    page = context.new_page()
    page.goto(url)
    page.locator("main select[name^=qty_]").first.select_option("1")
    page.get_by_label("Why are you returning it?").select_option("too_big")
    page.get_by_role("button", name="Start my return").click()
    page.wait_for_load_state()
    screenshot(page, "page-returns-done-phone")
    text = page.locator("main").inner_text()
    context.close()
    assert re.search(r"Your return number is R-[2-9A-Z]{8}", text), text
    assert "Send it by" in text and "another website" not in text
    assert look(browser, url, "returns-followed") == []
