"""`/r/{token}`: review one product of an order (the link in the review request mail).

GET shows the form (or the review's status once it was moderated) and records nothing; POST
stores the review as pending, or replaces it while it is still pending (one row per order
line, keyed `review:<order line id>`); an identical second POST changes nothing. Cross-site
POSTs are refused; text is cleaned of control characters and always escaped when shown.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from flows.pages.site import Site, clean_text, from_another_site, read_form
from tasks.aftercare.followups import product_title
from tasks.i18n import N_
from tasks.links import Purpose
from tasks.store.models import Order, Product
from tasks.storefront import reviews
from tasks.storefront.words import Say, speaker

PAGE = "review"
STATUS_TEXT = {
    reviews.APPROVED: N_("Your review was published. Thank you for sharing it."),
    reviews.REJECTED: N_("Your review was not published because it did not follow our review "
                         "rules. If you have a question about it, please write to us."),
}


def register(app: FastAPI, site: Site) -> None:
    """Add this page's routes to the edge app."""

    @app.api_route("/r/{token}", methods=["GET", "HEAD"])
    def review_page(token: str, request: Request) -> Response:
        site.hits.count(PAGE, request.method, site.today())
        if not site.allowed(request, token):
            return site.too_many()
        return show(site, token)

    @app.post("/r/{token}")
    async def review_post(token: str, request: Request) -> Response:
        site.hits.count(PAGE, "POST", site.today())
        if not site.allowed(request, token):
            return site.too_many()
        if cross_site(request, site):
            return site.friendly(403, N_("Please send your review from our page"), N_(
                "This form can only be sent from the review page itself. Please open the link "
                "in our e-mail again."))
        form = await read_form(request)
        return await run_in_threadpool(record, site, token, form)  # never block the loop


def show(site: Site, token: str) -> Response:
    link = site.link(token, Purpose.REVIEW)
    if link is None:
        return site.friendly()
    with site.session() as session:
        found = target(site, session, link)
        if found is None:
            return site.friendly()
        order, line, product = found
        say = words(site, order)
        existing = reviews.review_of(session, line.id)
        if existing is not None and existing.status != reviews.PENDING:
            return decided(site, product, existing.status, say)
        values = {"rating": str(existing.rating), "title": existing.title or "",
                  "body": existing.body or "", "display_name": existing.display_name} \
            if existing else {"rating": "", "title": "", "body": "",
                              "display_name": reviews.default_display_name(order.customer, say)}
        return form_page(site, token, product, values, [], bool(existing), say)


def record(site: Site, token: str, form: dict[str, str]) -> Response:
    link = site.link(token, Purpose.REVIEW)
    if link is None:
        return site.friendly()
    limit = site.cfg.pages.max_comment_chars
    values = {name: clean_text(form.get(name), limit * 2 + 1000) or ""
              for name in ("rating", "title", "body", "display_name")}
    with site.session(write=True) as session:
        found = target(site, session, link)
        if found is None:
            return site.friendly()
        order, line, product = found
        say = words(site, order)
        draft, problems = reviews.check_draft(
            values["rating"], values["title"] or None, values["body"] or None,
            values["display_name"] or None, limit, say)
        if draft is None:
            return form_page(site, token, product, values, problems, False, say, status=422)
        outcome = reviews.submit(session, order, line, draft, site.clock())
    if outcome in STATUS_TEXT:
        return decided(site, product, outcome, say)
    return site.render("review_thanks.html", locale=say.locale,  # words its own title
                       product=product, draft=draft, token=token)


def target(site: Site, session, link):
    """(order, line, product name) the link names, or None (gone, erased, not reviewable)."""
    order = site.order_of(session, link.subject)
    if order is None:
        return None
    line = reviews.line_of(session, order, link.extra)
    if line is None:
        return None
    catalog = session.scalar(select(Product.title).where(Product.sku == line.sku))
    return order, line, product_title(line, catalog)  # the product as the mail named it


def form_page(site: Site, token: str, product: str, values: dict[str, str],
              problems: list[str], editing: bool, say: Say, status: int = 200) -> Response:
    return site.render("review.html", status, locale=say.locale, product=product,
                       values=values, problems=problems, editing=editing, token=token,
                       stars=reviews.STARS, max_chars=site.cfg.pages.max_comment_chars,
                       title_chars=reviews.TITLE_CHARS, name_chars=reviews.NAME_CHARS)


def decided(site: Site, product: str, status: str, say: Say) -> Response:
    return site.render("message.html", locale=say.locale, text=say(STATUS_TEXT[status]),
                       title=say(N_("Your review of %(product)s"), product=product))


def words(site: Site, order: Order) -> Say:
    """The page's text in the order's language (the one its template speaks)."""
    return speaker(site.cfg, site.page_locale(order.locale))


def cross_site(request: Request, site: Site) -> bool:
    return from_another_site(request, site.cfg.store.links_base_url)
