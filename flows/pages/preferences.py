"""The preferences page and RFC 8058 one-click unsubscribe.

    GET  /u/{token}                 the page: current state, buttons; changes nothing
    POST /u/{token}                 `List-Unsubscribe=One-Click` alone: unsubscribe at once
                                    (mail providers: no cookies, any origin; 200 text/plain);
                                    any other form comes from the page itself (same origin only)
    GET, POST /unsubscribe?token=   the links mailed before /u/ existed: the same page and
                                    one-click, for the address the old token names

A /u/ token names a customer (tasks/links.py); the page works on that customer's address.
Mail scanners fetch every link, so nothing changes without a real button's POST.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from flows.pages.site import Site, from_another_site, read_form
from tasks.i18n import N_
from tasks.links import Purpose
from tasks.messaging.unsubscribe import UnsubscribeError, normalise, verify_token
from tasks.storefront.preferences import (
    MailState,
    mail_state,
    record_choices,
    resubscribe,
    suppression_of,
    unsubscribe_all,
)
from tasks.storefront.words import Say, speaker

PAGE = "preferences"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
TOPIC_NAMES = {
    "reviews": N_("Reviews"), "offers": N_("Offers"), "care": N_("Care"),
    "birthday": N_("Birthday"), "loyalty": N_("Loyalty"), "winback": N_("Winback"),
}
TOPIC_TEXT = {
    "reviews": N_("Requests to review what you bought"),
    "offers": N_("Offers and products we think you will like, and reminders to restock"),
    "care": N_("Care guides that help your purchases last"),
    "birthday": N_("A birthday greeting, sometimes with a gift"),
    "loyalty": N_("News about your points, rewards and tier"),
    "winback": N_("A note with what is new when we have not seen you in a while"),
}
SAVED = {
    "unsubscribe": N_("Done: you are unsubscribed from all our marketing e-mails."),
    "resubscribe": N_("Welcome back: you will get our marketing e-mails again."),
    "topics": N_("Saved: we will only send the kinds of e-mail you ticked."),
}


@dataclass(frozen=True)
class Subject:
    """Whose preferences a link opens."""

    address: str
    consent: bool | None  # the customer's marketing consent; None for an old address link
    locale: str | None = None  # the customer's; None for an old address link (the browser's)


def register(app: FastAPI, site: Site) -> None:
    """Add this page's routes to the edge app."""

    @app.api_route("/u/{token}", methods=["GET", "HEAD"])
    def show(request: Request, token: str) -> Response:
        return page(site, request, token, old=False)

    @app.post("/u/{token}")
    async def change(request: Request, token: str) -> Response:
        return await post(site, request, token, old=False)

    @app.api_route("/unsubscribe", methods=["GET", "HEAD"])
    def show_old(request: Request, token: str = "") -> Response:
        return page(site, request, token, old=True)

    @app.post("/unsubscribe")
    async def change_old(request: Request, token: str = "") -> Response:
        return await post(site, request, token, old=True)


def page(site: Site, request: Request, token: str, old: bool) -> Response:
    """The page as it is now; a GET or HEAD never writes."""
    site.hits.count(PAGE, request.method, site.today())
    if not site.allowed(request, token):
        return site.too_many()
    with site.session() as session:
        subject = subject_of(site, session, token, old)
        if subject is None:
            return site.friendly()
        state = mail_state(session, subject.address, site.cfg.pages.topics, site.secret_key)
    return render(site, request, subject, state)


async def post(site: Site, request: Request, token: str, old: bool) -> Response:
    site.hits.count(PAGE, "POST", site.today())
    if not site.allowed(request, token):
        return site.too_many()
    form = await read_form(request)
    if form == ONE_CLICK:  # database work off the event loop: a write may wait for a sweep
        return await run_in_threadpool(one_click, site, token, old)
    if from_elsewhere(site, request):
        return site.friendly(403, N_("This form came from another website"), N_(
            "For your safety we only take changes made on our own page. Please open the link "
            "in our e-mail again and choose there."))
    action = form.get("action", "")
    if action not in SAVED:
        return site.friendly(400, N_("We did not understand that"),
                             N_("Please open the link in our e-mail again and choose there."))
    return await run_in_threadpool(save, site, request, token, old, action, form)


def save(site: Site, request: Request, token: str, old: bool, action: str,
         form: dict[str, str]) -> Response:
    now = site.clock()
    with site.session(write=True) as session:
        subject = subject_of(site, session, token, old)
        if subject is None:
            return site.friendly()
        apply(site, session, subject.address, action, form, now)
        state = mail_state(session, subject.address, site.cfg.pages.topics, site.secret_key)
    return render(site, request, subject, state, SAVED[action])


def one_click(site: Site, token: str, old: bool) -> Response:
    """RFC 8058: unsubscribe now, answer in plain text, never redirect; idempotent."""
    with site.session(write=True) as session:
        subject = subject_of(site, session, token, old)
        if subject is None:
            return PlainTextResponse("This unsubscribe link is not valid.\n", status_code=404)
        unsubscribe_all(session, subject.address, site.clock(), "one-click")
    return PlainTextResponse(f"You are unsubscribed: {site.cfg.store.name} will send no more "
                             "marketing e-mail to this address.\n")


def apply(site: Site, session, address: str, action: str, form: dict[str, str], now) -> None:
    if action == "unsubscribe":
        unsubscribe_all(session, address, now, "page")
    elif action == "resubscribe":
        resubscribe(session, address, now, "page: resubscribe")
    else:
        chosen = {topic: form.get(f"topic_{topic}") == "on" for topic in site.cfg.pages.topics}
        record_choices(session, address, chosen, now, "page")


def subject_of(site: Site, session, token: str, old: bool) -> Subject | None:
    """The address a link stands for, or None (wrong link, customer gone or erased)."""
    if old:
        try:
            address = verify_token(token, site.secret_key)
        except UnsubscribeError:
            return None
        erased = suppression_of(session, address, site.secret_key) == "erasure"
        return None if erased else Subject(address, None)
    link = site.link(token, Purpose.PREFERENCES)
    customer = site.customer_of(session, link.subject) if link else None
    if customer is None or not customer.email:
        return None
    return Subject(normalise(customer.email), bool(customer.accepts_marketing), customer.locale)


def from_elsewhere(site: Site, request: Request) -> bool:
    return from_another_site(request, site.cfg.store.links_base_url)


def render(site: Site, request: Request, subject: Subject, state: MailState,
           notice: str | None = None) -> Response:
    """The page; `notice` (marked text) and the topics said in the customer's language."""
    say = speaker(site.cfg, site.page_locale(subject.locale))
    action = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    topics = [{"name": topic, "on": on, "label": said(say, TOPIC_NAMES, topic),
               "text": said(say, TOPIC_TEXT, topic)} for topic, on in state.topics.items()]
    return site.render("preferences.html", locale=say.locale,  # words its own title
                       action=action, address=masked(subject.address), state=state,
                       topics=topics, consent=subject.consent, notice=notice and say(notice))


def said(say: Say, words: dict[str, str], topic: str) -> str:
    """Our words about a topic in the reader's language; a topic the store added itself to
    pages.yaml by its own name."""
    return say(words[topic]) if topic in words else topic.capitalize()


def masked(address: str) -> str:
    """a•••@example.com: enough to recognise, not enough to harvest."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}•••@{domain}"
