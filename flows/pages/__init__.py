"""The customer pages behind every link in our mail, served by the edge app (flows/edge.py).

    GET  /o/{token}            the order: items, timeline, parcels, related products (order.py)
    GET  /f/{token}?r=N, POST  the delivery survey; only the POST records (survey.py)
    GET  /r/{token}, POST      a product review (reviews.py)
    GET  /u/{token}, POST      preferences; RFC 8058 one-click unsubscribe (preferences.py)
    GET  /l/{token}, POST      loyalty points, tier and joining (loyalty.py)
    GET  /returns/{token}, POST  start a return or exchange, follow one; its label PDF
                               at /returns/{token}/label/{rma} (returns.py)
    GET  /s/{token}, POST      subscribe to reorder: records the click, 303 to the store

Tokens: tasks/links.py. Templates: configs/templates/pages. Shared parts: site.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException

from flows.pages import loyalty, order, preferences, returns, reviews, subscribe, survey
from flows.pages.site import FormTooLarge, MaskTokens, RequestLanguages, SecurityHeaders, Site
from tasks.config import Config
from tasks.i18n import N_
from tasks.settings import Settings
from tasks.store.db import engine_for, reader_for

PAGE_MODULES = (order, survey, reviews, preferences, loyalty, returns, subscribe)


def mount(app: FastAPI, cfg: Config, secret_key: str, database_url: str,
          clock: Callable[[], datetime] = lambda: datetime.now(UTC),
          settings: Settings | None = None) -> Site:
    """Add the customer pages, their stylesheet and their headers to the edge app."""
    site = Site(cfg, secret_key, engine_for(database_url), reader_for(database_url), clock,
                settings)
    logging.getLogger("uvicorn.access").addFilter(MaskTokens())

    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestLanguages)  # the reader's languages, for pages with no order

    @app.exception_handler(FormTooLarge)
    async def form_too_large(request: Request, exc: FormTooLarge) -> Response:
        return site.friendly(413, N_("That was more than we can take"),
                             N_("Please shorten your text and send it again."))

    @app.exception_handler(HTTPException)
    async def not_found(request: Request, exc: HTTPException) -> Response:
        """Webhook senders get plain text; people get the friendly page, never JSON."""
        if request.url.path.startswith("/webhooks/"):
            return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code,
                                     headers=exc.headers)
        return site.friendly(exc.status_code if exc.status_code in (404, 405) else 400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return site.friendly(400)

    stylesheet = site.templates.get_template("site.css").render(colors=cfg.store.colors)

    @app.get("/assets/site.css")
    def css() -> Response:
        return Response(stylesheet, media_type="text/css",
                        headers={"Cache-Control": "public, max-age=3600"})

    for module in PAGE_MODULES:
        module.register(app, site)
    return site
