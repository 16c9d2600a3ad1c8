"""The returns page: GET /returns/{token} shows what can come back, its POST opens a return.

    GET/HEAD /returns/{token}   the order's lines, each with the units still returnable (or why
                                none are), a reason, refund or exchange (another size or colour
                                in stock), and the order's returns so far with their RMA,
                                status and instructions. Writes nothing (counted in page_hits).
    POST     /returns/{token}   opens the return (tasks/returns/requests.open_returns) and shows
                                the RMA, the steps and what the customer gets back, at once;
                                or the form again with one line saying what to change (422).
    GET/HEAD /returns/{token}/label/{rma}   the return's label PDF, when an operator or the
                                carrier supplied one as a file (a URL label links straight out).

The form carries `seq`, the number of returns the order had when it was shown: the same form
sent twice makes the same effect key (one return), a later return is a new form.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any
from weakref import WeakKeyDictionary

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from starlette.concurrency import run_in_threadpool

from flows.pages.site import Site, clean_text, from_another_site, read_form
from tasks.archive import ArchiveError
from tasks.i18n import N_
from tasks.links import Purpose
from tasks.returns.notices import return_context, status_label
from tasks.returns.policy import ReturnableLine, exchange_options, returnable_lines
from tasks.returns.requests import ReturnRefused, ReturnRequest, open_returns
from tasks.runtime import Runtime
from tasks.settings import Settings
from tasks.states import ReturnStatus
from tasks.store.models import Order, Product, Return
from tasks.store.returns import units_not_kept
from tasks.storefront.words import Say, comment_too_long, speaker

PAGE = "returns"  # the page_hits name
log = logging.getLogger("journeys.pages")
MAX_UNITS = 999


_RUNTIMES: WeakKeyDictionary[Site, Runtime] = WeakKeyDictionary()


def runtime_of(site: Site) -> Runtime:
    """What open_returns needs (config, the key its mail's links are sealed with, the archive
    a PDF label is read from), built once per edge process from what the site was mounted
    with."""
    if site not in _RUNTIMES:
        settings = site.settings or Settings(secret_key=site.secret_key, config_dir=site.cfg.dir)
        _RUNTIMES[site] = Runtime(settings=settings, config=site.cfg)
    return _RUNTIMES[site]


def register(app: FastAPI, site: Site) -> None:
    """Add this page's routes to the edge app."""

    @app.api_route("/returns/{token}", methods=["GET", "HEAD"])
    def returns_page(token: str, request: Request) -> Response:
        if not site.allowed(request, token):
            return site.too_many()
        site.hits.count(PAGE, request.method, site.today())
        link = site.link(token, Purpose.RETURNS)
        return site.friendly() if link is None else show(site, link.subject, token)

    @app.api_route("/returns/{token}/label/{rma}", methods=["GET", "HEAD"])
    def return_label(token: str, rma: str, request: Request) -> Response:
        """The return's label PDF an operator or the carrier supplied (read only)."""
        if not site.allowed(request, token):
            return site.too_many()
        site.hits.count(PAGE, request.method, site.today())
        link = site.link(token, Purpose.RETURNS)
        if link is None:
            return site.friendly()
        return label_pdf(site, link.subject, rma)

    @app.post("/returns/{token}")
    async def returns_post(token: str, request: Request) -> Response:
        if not site.allowed(request, token):
            return site.too_many()
        site.hits.count(PAGE, "POST", site.today())
        if from_another_site(request, site.cfg.store.links_base_url):
            return site.friendly(403, N_("Please send the form from our own page"), N_(
                "This form was sent from another website, so we did not open a return. Open "
                "the link in our e-mail to start one."))
        link = site.link(token, Purpose.RETURNS)
        if link is None:
            return site.friendly()
        form = await read_form(request)
        return await run_in_threadpool(submit, site, link.subject, token, form)


# ---------------------------------------------------------------- reading


class View:
    """What the page shows of one order: its lines as the policy sees them, the variants each
    may be exchanged for, and its returns so far."""

    def __init__(self, session, site: Site, order: Order):
        cfg, now = site.cfg, site.clock()
        skus = sorted({line.sku for line in order.lines if line.sku})
        products = {p.sku: p for p in session.scalars(select(Product).where(
            Product.sku.in_(skus)))}
        units = units_not_kept(session, [order.id]).get(order.id, {})
        self.order = order
        self.lines = returnable_lines(order, products, units, now, cfg)
        wanted = [line.sku for line in self.lines if line.units and line.sku]
        self.options = exchange_options(session, wanted) if cfg.returns.exchanges else {}
        self.returns = list(session.scalars(
            select(Return).where(Return.order_id == order.id).order_by(Return.id)
            .options(selectinload(Return.lines))))


def show(site: Site, order_id: int, token: str) -> HTMLResponse:
    with site.session() as session:
        order = site.order_of(session, order_id)
        if order is None:
            return site.friendly()
        if not site.cfg.returns.enabled:
            return not_online(site, order)
        return form_page(site, View(session, site, order), token)


def label_pdf(site: Site, order_id: int, rma: str) -> Response:
    """The archived label of one of the order's returns; the friendly page for anything else
    (another order's RMA, no PDF label, an archive that cannot give it back now)."""
    with site.session() as session:
        order = site.order_of(session, order_id)
        ref = order and session.scalar(select(Return.label_ref).where(
            Return.order_id == order.id, Return.rma == rma[:20]))
    if not ref:
        return site.friendly()
    try:
        pdf = runtime_of(site).archive.get(ref)
    except ArchiveError:
        log.warning("return label %s could not be read from the archive", rma, exc_info=True)
        return site.friendly(503, N_("Your label is not available right now"),
                             N_("Please try again in a few minutes. Your return is not "
                                "affected."))
    return Response(pdf, media_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="return-label-{rma}.pdf"'})


def not_online(site: Site, order: Order) -> HTMLResponse:
    say = speaker(site.cfg, site.page_locale(order.locale))
    text = say(N_("We do not take returns online. %(policy)s"),
               policy=say(site.cfg.store.return_policy))
    return site.render("message.html", title=N_("Returns"), text=text, locale=say.locale)


def titles(view: View) -> dict[str, str]:
    return {p.sku: p.title for found in view.options.values() for p in found}


def return_shown(ret: Return, view: View, site: Site, token: str, say: Say) -> dict[str, Any]:
    """One of the order's returns: status in words, and the steps while it must be sent."""
    kind = "approved" if ret.status == ReturnStatus.APPROVED else ret.status
    shown = return_context(ret, view.order, kind, site.cfg, titles(view), say.locale,
                           f"/returns/{token}")
    return {**shown, "status_label": status_label(ret.status, say)}


def form_page(site: Site, view: View, token: str, chosen: Mapping[str, str] | None = None,
              error: str | None = None, status: int = 200,
              done: Return | None = None) -> HTMLResponse:
    cfg, order = site.cfg, view.order
    say = speaker(cfg, site.page_locale(order.locale))
    lines = [line_shown(line, view.options.get(line.sku or "", [])) for line in view.lines]
    return site.render(  # returns.html words its own title
        "returns.html", status,
        order_name=order.name, currency=order.currency, locale=say.locale, lines=lines,
        returnable=any(line["units"] for line in lines), action=f"/returns/{token}",
        reasons={key: say(reason.label) for key, reason in cfg.returns.reasons.items()},
        exchanges=any(line["options"] for line in lines if line["units"]),
        seq=len(view.returns), chosen=chosen or {},
        error=error, return_policy=say(cfg.store.return_policy),
        done=return_shown(done, view, site, token, say) if done is not None else None,
        returns=[return_shown(ret, view, site, token, say) for ret in reversed(view.returns)
                 if done is None or ret.id != done.id],
        max_comment=say.number(cfg.pages.max_comment_chars))


def line_shown(line: ReturnableLine, options: list[Product]) -> dict[str, Any]:
    return {"id": line.line_id, "title": line.title, "variant_title": line.variant_title,
            "units": line.units, "why_not": line.why_not, "unit_value": str(line.unit_value),
            "options": [(p.sku, p.title) for p in options]}


# ---------------------------------------------------------------- the POST


def submit(site: Site, order_id: int, token: str, form: dict[str, str]) -> HTMLResponse:
    """Validate and open the return; the form again with a message (422), or the result."""
    limit = site.cfg.pages.max_comment_chars
    with site.session(write=True) as session:
        order = site.order_of(session, order_id)
        if order is None:
            return site.friendly()
        if not site.cfg.returns.enabled:
            return not_online(site, order)
        say = speaker(site.cfg, site.page_locale(order.locale))
        request, error = parse_form(order, form, limit, say)
        if request is not None:
            try:
                opened = open_returns(session, [request], site.clock(), runtime_of(site))
                return form_page(site, View(session, site, order), token, done=opened[0].ret)
            except ReturnRefused as refused:
                error = str(refused)
        message = error[:1].upper() + error[1:] if error else None
        return form_page(site, View(session, site, order), token, form, message, 422)


def small_int(value: str | None, limit: int) -> int | None:
    value = (value or "").strip()
    ok = value.isascii() and value.isdigit() and len(value) <= 6
    return int(value) if ok and int(value) <= limit else None


def parse_form(order: Order, form: Mapping[str, str], comment_limit: int, say: Say
               ) -> tuple[ReturnRequest | None, str | None]:
    """The form as a ReturnRequest, or (None, what to change, in the customer's words)."""
    lines: dict[int, int] = {}
    for line in order.lines:
        raw = form.get(f"qty_{line.id}", "0") or "0"
        units = small_int(raw, MAX_UNITS)
        if units is None:
            return None, say(N_("%(item)s: choose a number of units from the list"),
                             item=line.title)
        if units:
            lines[line.id] = units
    resolution = form.get("resolution") or "refund"
    exchange = {lid: form.get(f"exchange_{lid}", "").strip() for lid in lines}
    comment = clean_text(form.get("comment"), 10 * comment_limit)
    if comment is not None and len(comment) > comment_limit:
        return None, comment_too_long(say, len(comment), comment_limit)
    seq = small_int(form.get("seq"), 10**6) or 0
    request = ReturnRequest(order.id, lines, (form.get("reason") or "").strip(), resolution,
                            {k: v for k, v in exchange.items() if v and resolution == "exchange"},
                            comment, "page", "")
    return ReturnRequest(**{**request.__dict__, "key": page_key(request, seq)}), None


def page_key(request: ReturnRequest, seq: int) -> str:
    """The same form sent twice → the same key; `seq` tells a later return apart."""
    chosen = repr((sorted(request.lines.items()), request.resolution,
                   sorted(request.exchange.items())))
    digest = hashlib.sha256(chosen.encode()).hexdigest()[:16]
    return f"return:{request.order_id}:page:{seq}:{digest}"
