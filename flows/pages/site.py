"""What every customer page shares: templates, the app database, tokens, limits, headers.

A page handler resolves its token with `site.link(...)` (None: answer `site.friendly(...)`),
reads what it shows in one short session, and renders a template from
configs/templates/pages. GET and HEAD never write the journey's tables; a POST makes one
idempotent change. Wrong, expired and unknown tokens all get the same friendly page, so a
guesser learns nothing about what exists.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import Engine, select

from tasks.config import Config
from tasks.i18n import (
    N_,
    accepted_locale,
    available_languages,
    enable_i18n,
    gettext_names,
    locales_dir,
    translate,
)
from tasks.links import Link, LinkError, Purpose, mask, read_token
from tasks.messaging.money import format_day, format_money, format_number, order_locale
from tasks.settings import Settings
from tasks.store.db import session_scope
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import Customer, Erasure, Order, PageHit

MAX_FORM = 64 * 1024  # the largest form a page takes (a review is a few KB)
HIT_FLUSH_SECONDS = 10.0
log = logging.getLogger("journeys.pages")
# The request's Accept-Language (RequestLanguages sets it): a page with no order or customer
# to take a language from speaks the reader's browser's, if we have a catalog for it.
REQUEST_LANGUAGES: ContextVar[str | None] = ContextVar("request_languages", default=None)

# No inline script anywhere, no framing, no referrer (tokens stay out of the store's logs).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' https: "
                               "data:; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class FormTooLarge(Exception):
    """A form body larger than MAX_FORM."""


class Site:
    """Shared by the page modules (flows/pages/*.py) of one edge process."""

    def __init__(self, cfg: Config, secret_key: str, engine: Engine, reader: Engine,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 settings: Settings | None = None):
        self.cfg, self.secret_key, self.engine, self.clock = cfg, secret_key, engine, clock
        self.reader = reader
        self.settings = settings  # the edge's (the archive a return label is read from)
        self.templates = enable_i18n(Environment(
            loader=FileSystemLoader(cfg.dir / "templates" / "pages"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True))
        self.templates.filters["money"] = lambda amount, currency, locale=None: format_money(
            amount, currency, locale)
        self.templates.filters["day"] = lambda day, locale=None: format_day(day, locale)
        self.templates.filters["number"] = format_number
        self.locales = locales_dir(cfg.dir)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_ip = parse(cfg.pages.per_ip_limit)
        self.per_token = parse(cfg.pages.per_token_limit)
        self.hits = HitCounter(engine)

    # ------------------------------------------------------------ tokens and limits

    def today(self) -> date:
        return self.clock().date()

    def link(self, token: str, purpose: Purpose) -> Link | None:
        """The link a token names if it is ours, for this page and not expired; else None."""
        lifetime = getattr(self.cfg.pages.link_days, purpose.name.lower())
        try:
            return read_token(self.secret_key, token, purpose, self.today(), lifetime)
        except LinkError:
            return None

    def allowed(self, request: Request, token: str = "") -> bool:
        """Within the per-address and per-link limits (both counted on every request)."""
        client = request.client.host if request.client else "unknown"
        by_ip = self.limiter.hit(self.per_ip, "ip", client)
        return self.limiter.hit(self.per_token, "token", token[:48]) and by_ip if token else by_ip

    def order_of(self, session, order_id: int) -> Order | None:
        """The order a link names, unless it or its customer is gone (erased: friendly page)."""
        return self._unless_erased(session, Order, Order.customer_id, order_id)

    def customer_of(self, session, customer_id: int) -> Customer | None:
        return self._unless_erased(session, Customer, Customer.id, customer_id)

    @staticmethod
    def _unless_erased(session, model, customer_column, key: int):
        """The row and whether its customer was erased, in one query."""
        found = session.execute(
            select(model, Erasure.id).outerjoin(Erasure, Erasure.customer_id == customer_column)
            .where(model.id == key)).first()
        return found[0] if found is not None and found[1] is None else None

    def session(self, write: bool = False):
        """A read-only session (every GET), or with `write` one that may change rows (a POST):
        on SQLite only the second takes the write lock, so a page never waits for a sweep."""
        return session_scope(self.engine if write else self.reader)

    # ------------------------------------------------------------ answers

    def page_locale(self, known: str | None = None) -> str:
        """The page's locale: `known` (the order's or customer's), else the browser's
        Accept-Language, else the store's default; the first one we have words for."""
        languages = available_languages(self.locales)
        browser = accepted_locale(REQUEST_LANGUAGES.get(), languages)
        return order_locale(known, browser, self.cfg.store.default_locale, languages)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """`template` in the page's locale (`locale` in `context`: the one its order or customer
        has, if the handler knows it). Templates get that `locale` for dates and money; a
        `title` or `text` from Python (marked with N_) is translated here."""
        locale = self.page_locale(context.pop("locale", None))
        default = self.cfg.store.default_locale
        for key in ("title", "text"):
            if isinstance(context.get(key), str):
                context[key] = translate(self.locales, locale, default, context[key])
        html = self.templates.get_template(template).render(
            store=self.cfg.store, **context, locale=locale, lang=locale.split("_")[0],
            **gettext_names(self.locales, locale, default))
        return HTMLResponse(html, status_code=status)

    def friendly(self, status: int = 404, title: str = N_("This link is not valid any more"),
                 text: str | None = None) -> HTMLResponse:
        """The page for a wrong, expired or unknown link (and for limits): how to reach us."""
        return self.render("message.html", status=status, title=title, text=text or N_(
            "The link may have expired, or it was copied only in part. Your order is not "
            "affected. If you need anything, our team is happy to help."))

    def too_many(self) -> HTMLResponse:
        response = self.friendly(429, N_("Too many requests"),
                                 N_("Please wait a minute and try again."))
        response.headers["Retry-After"] = "60"
        return response


class HitCounter:
    """Page requests counted in memory and added to `page_hits` every few seconds by a thread:
    a GET never waits for (or takes) the app database's write lock."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.counts: Counter[tuple[date, str, str]] = Counter()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def count(self, page: str, method: str, day: date) -> None:
        with self.lock:
            self.counts[(day, page, method)] += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="page-hits", daemon=True)
                self.thread.start()

    def _loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(HIT_FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            counts, self.counts = self.counts, Counter()
        if not counts:
            return
        try:
            add_hits(self.engine, counts)
        except Exception:  # noqa: BLE001 - counts are a report figure, never worth a failed page
            log.warning("page hit counts not stored (%d kinds)", len(counts), exc_info=True)


def add_hits(engine: Engine, counts: Counter[tuple[date, str, str]]) -> None:
    table = PageHit.__table__
    with session_scope(engine) as session:
        insert_ignoring_duplicates(session, PageHit, [
            {"day": day, "page": page, "method": method, "hits": 0}
            for day, page, method in counts], ["day", "page", "method"])
        for (day, page, method), hits in counts.items():
            session.execute(table.update().where(
                table.c.day == day, table.c.page == page, table.c.method == method)
                .values(hits=table.c.hits + hits))


def from_another_site(request: Request, links_base_url: str) -> bool:
    """A page POST that another site's page made (CSRF): `Sec-Fetch-Site` says so, or the
    Origin names another origin. `Origin: null` is what a browser sends with our own form
    under our no-referrer policy, so it proves nothing; a forged form would still need the
    customer's secret token."""
    fetched = request.headers.get("sec-fetch-site")
    if fetched is not None and fetched.strip().lower() not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin", "").strip().lower()
    if origin in ("", "null"):
        return False
    ours = {_origin(str(request.base_url)), _origin(links_base_url),
            _origin(f"{request.url.scheme}://{request.headers.get('host', '')}")}
    return _origin(origin) not in ours


def _origin(url: str) -> str:
    parts = urlsplit(url.strip().lower())
    return f"{parts.scheme}://{parts.netloc}"


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded or multipart form (first value of each field), refused above MAX_FORM."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM:
        raise FormTooLarge
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=0, max_fields=50, max_part_size=MAX_FORM)
        return {k: v for k, v in form.items() if isinstance(v, str)}
    body, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM:
            raise FormTooLarge
        body.append(chunk)
    text = b"".join(body).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def clean_text(value: str | None, limit: int) -> str | None:
    """Customer text as stored: NUL and other control characters (not newlines) removed,
    trimmed; None when empty. Longer than `limit` is the caller's error to show."""
    if value is None:
        return None
    kept = "".join(c for c in value if c in "\n\t" or (ord(c) >= 32 and ord(c) != 127))
    kept = kept.encode("utf-8", errors="replace").decode("utf-8").strip()
    return kept or None


class SecurityHeaders:
    """SECURITY_HEADERS on every answer that does not set its own (a plain ASGI middleware:
    Starlette's BaseHTTPMiddleware cost a tenth of each page's time)."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in self.headers if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)


class RequestLanguages:
    """Keeps each request's Accept-Language in REQUEST_LANGUAGES for Site.render (a context
    variable: every request has its own, also in the thread a sync handler runs in)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        header = next((value.decode("latin-1") for name, value in scope.get("headers", [])
                       if name == b"accept-language"), None)
        token = REQUEST_LANGUAGES.set(header)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_LANGUAGES.reset(token)


class MaskTokens(logging.Filter):
    """uvicorn's access log with link tokens cut to a prefix (a token opens a customer's page)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            args[2] = mask(str(args[2]))
            record.args = tuple(args)
        return True
