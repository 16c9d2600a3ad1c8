"""Subscribe to reorder: GET /s/{token} shows one button, POST records the click and sends the
customer on to the store's subscription product (303).

The token is an order link (Purpose.ORDER) whose extra is the order line, written into the
replenishment mail when the store configures `replenishment.subscription_url`. A GET or HEAD
reads only (mail scanners prefetch links); the POST records a `subscription_click` timeline
event once per order and SKU (tasks/aftercare/subscription.py) and is refused when another
site sent it. journeys runs no billing: the store's own page does.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from flows.pages.site import Site, from_another_site, read_form
from tasks.aftercare.subscription import Offer, line_offer, record_click
from tasks.links import Purpose

PAGE = "subscribe"
SUBSCRIBE = "subscribe"  # the form's one value: anything else is not our form


def register(app: FastAPI, site: Site) -> None:
    """Add this page's routes to the edge app."""

    @app.api_route("/s/{token}", methods=["GET", "HEAD"])
    def show(request: Request, token: str) -> HTMLResponse:
        site.hits.count(PAGE, request.method, site.today())
        if not site.allowed(request, token):
            return site.too_many()
        found = offer_of(site, token)
        return site.friendly() if found is None else page(site, token, found[1])

    @app.post("/s/{token}")
    async def subscribe(request: Request, token: str) -> Response:
        site.hits.count(PAGE, "POST", site.today())
        if not site.allowed(request, token):
            return site.too_many()
        found = await run_in_threadpool(offer_of, site, token)
        if found is None:
            return site.friendly()
        if from_another_site(request, site.cfg.store.links_base_url):
            return site.friendly(403, "This form was sent from another site",
                                 "Nothing was recorded. Open the link in our e-mail and press "
                                 "the button on that page.")
        form = await read_form(request)
        if form.get("action") != SUBSCRIBE:
            return page(site, token, found[1], status=400,
                        error="We could not read that form; please press the button below.")
        await run_in_threadpool(record, site, found[0], found[1])
        return RedirectResponse(found[1].store_url, status_code=303)


def offer_of(site: Site, token: str) -> tuple[int, Offer] | None:
    """(order id, offer) a token names: our order link with a line, the order not erased, the
    store still offering a subscription for it; else None (the friendly page)."""
    link = site.link(token, Purpose.ORDER)
    if link is None or not link.extra:
        return None
    with site.session() as session:
        if site.order_of(session, link.subject) is None:
            return None
        offer = line_offer(session, link.subject, link.extra, site.cfg)
    return None if offer is None else (link.subject, offer)


def record(site: Site, order_id: int, offer: Offer) -> None:
    with site.session(write=True) as session:
        record_click(session, order_id, offer, site.clock())


def page(site: Site, token: str, offer: Offer, status: int = 200,
         error: str | None = None) -> HTMLResponse:
    return site.render("subscribe.html", status, title="Deliver it regularly", offer=offer,
                       action=f"/s/{token}", error=error)
