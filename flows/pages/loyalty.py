"""The rewards page: GET /l/{token} shows a customer's points, tier and history; POST joins.

The token's subject is a customer id (tasks/links.py, Purpose.LOYALTY), written into the
`loyalty_invite` and `loyalty_update` mails. A GET or HEAD reads only; the POST enrols through
tasks/storefront/loyalty_page.join (compare-and-set, so a second POST changes nothing) and is
refused when another site sent it. `/rewards` and `/rewards/join`, the links mailed before
tokens, name no customer: they get the friendly page with the store's contact.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from flows.pages.site import Site, from_another_site, read_form
from tasks.i18n import N_
from tasks.links import Purpose
from tasks.storefront.loyalty_page import join, rewards_view
from tasks.storefront.words import speaker

PAGE = "loyalty"
JOIN = "join"  # the form's one value: anything else is not our form


def register(app: FastAPI, site: Site) -> None:
    """Add this page's routes to the edge app."""

    @app.api_route("/l/{token}", methods=["GET", "HEAD"])
    def show(request: Request, token: str) -> HTMLResponse:
        site.hits.count(PAGE, request.method, site.today())
        if not site.allowed(request, token):
            return site.too_many()
        link = site.link(token, Purpose.LOYALTY)
        if link is None:
            return site.friendly()
        return page(site, token, link.subject)

    @app.post("/l/{token}")
    async def join_rewards(request: Request, token: str) -> HTMLResponse:
        site.hits.count(PAGE, "POST", site.today())
        if not site.allowed(request, token):
            return site.too_many()
        link = site.link(token, Purpose.LOYALTY)
        if link is None:
            return site.friendly()
        if cross_site(request, site):
            return site.friendly(403, N_("This form was sent from another site"), N_(
                "Nothing was changed. To join, open the link in our e-mail and press the button "
                "on that page."))
        form = await read_form(request)
        if form.get("action") != JOIN:
            return page(site, token, link.subject, status=400, error=N_(
                "We could not read that form. Nothing was changed; please press the button "
                "below."))
        return await run_in_threadpool(join_and_show, site, token, link.subject)

    @app.api_route("/rewards", methods=["GET", "HEAD", "POST"])
    @app.api_route("/rewards/join", methods=["GET", "HEAD", "POST"])
    def old_link() -> HTMLResponse:
        return site.friendly(410, N_("This rewards link is from an older e-mail"), N_(
            "It does not say whose rewards to show. Write to us and we will tell you your "
            "points, or join for you; newer e-mails carry a link to your own rewards page."))


def join_and_show(site: Site, token: str, customer_id: int) -> HTMLResponse:
    """Join (idempotent), then the page with what happened; off the event loop."""
    with site.session(write=True) as session:
        if site.customer_of(session, customer_id) is None:
            return site.friendly()
        joined = join(session, customer_id, site.clock())
    return page(site, token, customer_id, notice=N_(
        "Welcome! You are now a member: your points are yours to spend once they are "
        "available.") if joined else N_("You are already a member. Nothing was changed."))


def page(site: Site, token: str, customer_id: int, status: int = 200, notice: str | None = None,
         error: str | None = None) -> HTMLResponse:
    """The rewards page as it is now (after a join, with its confirmation: `notice` and
    `error` are marked text, said here in the customer's language)."""
    with site.session() as session:
        customer = site.customer_of(session, customer_id)
        if customer is None:
            return site.friendly()
        view = rewards_view(session, customer, site.cfg, site.clock())
    say = speaker(site.cfg, site.page_locale(view.locale))
    return site.render("loyalty.html", status, view=view, locale=say.locale,  # its own title
                       action=f"/l/{token}", notice=notice and say(notice),
                       error=error and say(error))


def cross_site(request: Request, site: Site) -> bool:
    return from_another_site(request, site.cfg.store.links_base_url)
