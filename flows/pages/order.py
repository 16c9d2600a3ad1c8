"""The order page, GET /o/{token} (Purpose.ORDER, subject: the order id).

The shipped, delivered, shipment exception and delay apology mails link here instead of the
carrier. The page only reads (mail scanners fetch every link): one short session gathers the
order, its lines, parcels, checkpoints and suggestions (tasks/storefront/order_page.py).

Links mailed before this page, /track/{carrier}/{number}, get the friendly page: a tracking
number is not proof of who asks, so it opens nothing.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from flows.pages.site import Site
from tasks.links import Purpose
from tasks.storefront.order_page import order_page

PAGE = "order"


def register(app: FastAPI, site: Site) -> None:
    """Add this page's routes to the edge app."""

    @app.api_route("/o/{token}", methods=["GET", "HEAD"])
    def show_order(token: str, request: Request) -> Response:
        site.hits.count(PAGE, request.method, site.today())
        if not site.allowed(request, token):
            return site.too_many()
        link = site.link(token, Purpose.ORDER)
        if link is None:
            return site.friendly()
        with site.session() as session:
            order = site.order_of(session, link.subject)
            if order is None:
                return site.friendly()
            view = order_page(session, order, site.cfg, site.secret_key, site.clock())
        return site.render("order.html", title=f"Order {view['order']['name']}",
                           locale=view["order"]["locale"], **view)

    @app.api_route("/track/{carrier}/{number}", methods=["GET", "HEAD"])
    def old_tracking_link(carrier: str, number: str, request: Request) -> Response:
        site.hits.count(PAGE, request.method, site.today())
        if not site.allowed(request):
            return site.too_many()
        return site.friendly()
