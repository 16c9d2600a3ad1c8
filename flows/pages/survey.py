"""The delivery survey page: GET /f/{token}?r=N shows the form, only its POST records.

    GET/HEAD /f/{token}?r=N   the order and the form, rating N pre-selected (records nothing;
                              counted in page_hits: the opens mail scanners make)
    POST     /f/{token}       the answer: stored once per order, changeable for
                              survey_change_minutes; an unhappy one opens a service case
    GET      /feedback?o=&r=&sig=   links in mails sent before the page existed: the same form,
                              posting to /f/{token}
    GET/HEAD /f/{token}/fit?a=C    the fit survey (tasks/aftercare/fit.py), choice C selected
    POST     /f/{token}/fit        its answer: stored once per order like the rating, no case

What is stored and when a case opens: tasks/storefront/survey.py.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from flows.pages.site import Site, clean_text, from_another_site, read_form
from tasks.aftercare.feedback import RATING_LABELS, verify_rating_link
from tasks.aftercare.fit import CHOICES, parse_choice
from tasks.i18n import N_
from tasks.links import Purpose, make_token
from tasks.store.models import Order
from tasks.storefront.survey import (
    FIT,
    ISSUE_LABELS,
    LOCKED,
    PAGE,
    Answer,
    chosen_tags,
    may_change,
    page_answer,
    parse_rating,
    record_answer,
)
from tasks.storefront.words import Say, comment_too_long, speaker


def register(app: FastAPI, site: Site) -> None:
    """Add this page's routes to the edge app."""

    @app.api_route("/f/{token}", methods=["GET", "HEAD"])
    def survey_page(token: str, request: Request) -> Response:
        return opened(site, request, token, lambda order_id: show_survey(
            site, order_id, token, request.query_params.get("r")))

    @app.api_route("/feedback", methods=["GET", "HEAD"])
    def old_survey_link(request: Request) -> Response:
        """A signed link from an earlier mail: the same form, posting to the new address."""
        if not site.allowed(request):
            return site.too_many()
        site.hits.count(PAGE, request.method, site.today())
        query = request.query_params
        if any(len(query.getlist(name)) > 1 for name in ("o", "r", "sig")):
            return site.friendly()  # a signed link never repeats a parameter
        order_id, rating = _small_int(query.get("o")), parse_rating(query.get("r"))
        if order_id is None or rating is None or not verify_rating_link(
                site.secret_key, order_id, rating, query.get("sig")):
            return site.friendly()
        token = make_token(site.secret_key, Purpose.FEEDBACK, order_id, site.today())
        return show_survey(site, order_id, token, str(rating))

    @app.api_route("/f/{token}/fit", methods=["GET", "HEAD"])
    def fit_page(token: str, request: Request) -> Response:
        return opened(site, request, token, lambda order_id: show_fit(
            site, order_id, token, parse_choice(request.query_params.get("a"))))

    @app.post("/f/{token}/fit")
    async def fit_answer(token: str, request: Request) -> Response:
        return await answered(site, request, token, answer_fit)

    @app.post("/f/{token}")
    async def survey_answer(token: str, request: Request) -> Response:
        return await answered(site, request, token, answer_survey)


def opened(site: Site, request: Request, token: str,
           show: Callable[[int], Response]) -> Response:
    """A GET/HEAD of a survey link: limited and counted; `show` the order's form."""
    if not site.allowed(request, token):
        return site.too_many()
    site.hits.count(PAGE, request.method, site.today())
    link = site.link(token, Purpose.FEEDBACK)
    return site.friendly() if link is None else show(link.subject)


async def answered(site: Site, request: Request, token: str,
                   answer: Callable[[Site, int, str, dict[str, str]], Response]) -> Response:
    """A survey form's POST: limited, counted, refused from another site; then `answer`."""
    if not site.allowed(request, token):
        return site.too_many()
    site.hits.count(PAGE, "POST", site.today())
    if cross_site(request, site):
        return site.friendly(403, N_("Please answer on our own page"), N_(
            "This form was sent from another website, so we did not record it. Open the link "
            "in our e-mail to answer."))
    link = site.link(token, Purpose.FEEDBACK)
    if link is None:
        return site.friendly()
    form = await read_form(request)
    return await run_in_threadpool(answer, site, link.subject, token, form)


def show_survey(site: Site, order_id: int, token: str, rating: str | None) -> HTMLResponse:
    now = site.clock()
    with site.session() as session:
        order = site.order_of(session, order_id)
        if order is None:
            return site.friendly()
        stored = page_answer(session, order.id)
        if stored is not None and not may_change(stored, now, site.cfg.pages.survey_change_minutes):
            return already_recorded(site, order)
        selected = parse_rating(rating)
        if stored is None:
            return survey_form(site, order, token, selected)
        return survey_form(site, order, token, selected or stored.rating, stored.comment or "",
                           set(stored.tags or []), changing=True)


def answer_survey(site: Site, order_id: int, token: str, form: dict[str, str]) -> HTMLResponse:
    """Validate the form; the form again with a message, or the thank-you page."""
    rating = parse_rating(form.get("rating"))
    tags = chosen_tags(form)
    limit = site.cfg.pages.max_comment_chars
    comment = clean_text(form.get("comment"), 10 * limit)  # the limit is checked, never cut
    now = site.clock()
    with site.session(write=True) as session:
        order = site.order_of(session, order_id)
        if order is None:
            return site.friendly()
        say, error = words(site, order), None
        if rating is None:
            error = say(N_("Please choose a rating from 1 to 5."))
        elif comment is not None and len(comment) > limit:
            error = comment_too_long(say, len(comment), limit)
        if error:
            return survey_form(site, order, token, rating, comment or "", set(tags), error=error,
                               status=422)
        outcome = record_answer(session, order.id, Answer(rating, comment, tags), now, site.cfg)
        if outcome.status == LOCKED:
            return already_recorded(site, order)
        return thanks(site, order, outcome.case)


def survey_form(site: Site, order: Order, token: str, selected: int | None, comment: str = "",
                tags: set[str] | None = None, changing: bool = False, error: str | None = None,
                status: int = 200) -> HTMLResponse:
    say = words(site, order)
    return site.render(  # survey.html words its own title
        "survey.html", status, order_name=order.name, locale=say.locale,
        items=[line.title for line in order.lines], action=f"/f/{token}",
        ratings=say.table(RATING_LABELS), selected=selected, issues=say.table(ISSUE_LABELS),
        tags=tags or set(), comment=comment,
        max_comment=say.number(site.cfg.pages.max_comment_chars), changing=changing,
        error=error)


def show_fit(site: Site, order_id: int, token: str, choice: str | None) -> HTMLResponse:
    with site.session() as session:
        order = site.order_of(session, order_id)
        if order is None:
            return site.friendly()
        stored = page_answer(session, order.id, FIT)
        if stored is not None and not may_change(stored, site.clock(),
                                                 site.cfg.pages.survey_change_minutes):
            return already_recorded(site, order)
        if stored is None:
            return fit_form(site, order, token, choice)
        return fit_form(site, order, token, choice or next(iter(stored.tags or []), None),
                        stored.comment or "", changing=True)


def answer_fit(site: Site, order_id: int, token: str, form: dict[str, str]) -> HTMLResponse:
    """The fit form's POST: the form again with a message, or the thank-you page."""
    choice = parse_choice(form.get("fit"))
    limit = site.cfg.pages.max_comment_chars
    comment = clean_text(form.get("comment"), 10 * limit)
    with site.session(write=True) as session:
        order = site.order_of(session, order_id)
        if order is None:
            return site.friendly()
        say, error = words(site, order), None
        if choice is None:
            error = say(N_("Please choose how it fits."))
        elif comment is not None and len(comment) > limit:
            error = comment_too_long(say, len(comment), limit)
        if error:
            return fit_form(site, order, token, choice, comment or "", error=error, status=422)
        answer = Answer(None, comment, [choice], topic=FIT)
        if record_answer(session, order.id, answer, site.clock(), site.cfg).status == LOCKED:
            return already_recorded(site, order)
        return site.render(
            "message.html", title=N_("Thank you"), locale=say.locale, text=say(N_(
                "Thank you: we have your answer about the fit of order %(order)s. If it is "
                "not the right size, reply to our e-mail and we will help you find one."),
                order=order.name))


def fit_form(site: Site, order: Order, token: str, selected: str | None, comment: str = "",
             changing: bool = False, error: str | None = None, status: int = 200
             ) -> HTMLResponse:
    say = words(site, order)
    return site.render(  # fit.html words its own title
        "fit.html", status, order_name=order.name, locale=say.locale,
        items=[line.title for line in order.lines], action=f"/f/{token}/fit",
        choices=say.table(CHOICES), selected=selected, comment=comment,
        max_comment=say.number(site.cfg.pages.max_comment_chars), changing=changing,
        error=error)


def thanks(site: Site, order: Order, case: bool) -> HTMLResponse:
    minutes = site.cfg.pages.survey_change_minutes
    order_token = make_token(site.secret_key, Purpose.ORDER, order.id, site.today())
    return site.render(  # survey_thanks.html words its own title
        "survey_thanks.html", locale=order.locale, order_name=order.name, case=case,
        order_url=f"/o/{order_token}", change_minutes=minutes)


def already_recorded(site: Site, order: Order) -> HTMLResponse:
    say = words(site, order)
    return site.render(
        "message.html", title=N_("Your answer is already recorded"), locale=say.locale,
        text=say(N_("Thank you: we have your answer about order %(order)s. If something is not "
                    "right with your order, our team is happy to help."), order=order.name))


def words(site: Site, order: Order) -> Say:
    """The page's text in the order's language (the one its template speaks)."""
    return speaker(site.cfg, site.page_locale(order.locale))


def cross_site(request: Request, site: Site) -> bool:
    return from_another_site(request, site.cfg.store.links_base_url)


def _small_int(value: str | None) -> int | None:
    ok = value and value.isascii() and value.isdigit() and len(value) <= 18
    return int(value) if ok else None

