"""The edge: one ASGI app that takes webhooks in (`journeys edge`, and `journeys server`).

A delivery is acknowledged only once it is stored in the inbox (tasks/inbox.py); the sweep
drains the inbox. Signatures are checked on the raw bytes before anything parses them; a
request that fails the check gets 401 and its body is neither parsed nor logged. Stateless:
several edges can run behind one proxy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from tasks import inbox, webhooks
from tasks.faults import fault_point
from tasks.settings import Settings, get_settings
from tasks.store.db import session_scope

MAX_BODY = 1024 * 1024  # Shopify's largest order bodies are a few hundred KB
# Requests that fail the signature check, per client address: a guess costs the guesser, and
# signed deliveries are never counted, so the providers are never throttled into losing any.
REFUSED_LIMIT = parse("60/minute")
log = logging.getLogger("journeys.edge")


class BodyTooLarge(Exception):
    """The request body is larger than MAX_BODY."""


async def read_body(request: Request) -> bytes:
    """The raw body, refused as soon as it is known to exceed MAX_BODY."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings | None = None,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC),
               nudge: Callable[[], None] = lambda: None) -> FastAPI:
    """The edge app over the inbox database that `settings` name (default: the environment).

    `nudge` is called after each stored delivery (flows/realtime.py: ask for real-time intake).
    """
    settings = settings or get_settings()
    engine = inbox.inbox_engine(inbox.inbox_url(settings), settings.database_url)
    limiter, refusals = MovingWindowRateLimiter(MemoryStorage()), REFUSED_LIMIT
    app = FastAPI(title="journeys edge", docs_url=None, redoc_url=None, openapi_url=None)

    def refused(request: Request, provider: str) -> PlainTextResponse:
        client = request.client.host if request.client else "unknown"
        if not limiter.hit(refusals, client):
            return PlainTextResponse("too many refused requests\n", status_code=429,
                                     headers={"Retry-After": "60"})
        log.warning("%s webhook refused: missing or wrong signature (client %s)", provider, client)
        return PlainTextResponse("signature missing or wrong\n", status_code=401)

    async def accept(delivery: inbox.Delivery) -> PlainTextResponse:
        try:
            await run_in_threadpool(store_delivery, engine, delivery, clock())
        except SQLAlchemyError as exc:  # not stored: the sender must retry
            log.error("%s delivery not stored: %s", delivery.provider, type(exc).__name__)
            return PlainTextResponse("not stored, retry later\n", status_code=503)
        nudge()
        return PlainTextResponse("stored\n", status_code=200)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> PlainTextResponse:
        return PlainTextResponse(f"body larger than {MAX_BODY} bytes\n", status_code=413)

    @app.post("/webhooks/shopify")
    async def shopify(request: Request) -> PlainTextResponse:
        body = await read_body(request)
        secrets = (settings.shopify_webhook_secret, settings.shopify_webhook_secret_previous)
        if not webhooks.signed_by_any(body, request.headers.get("x-shopify-hmac-sha256"),
                                      secrets):
            return refused(request, "shopify")
        delivery = webhooks.shopify_delivery(body, request.headers)
        if not delivery.topic:
            return PlainTextResponse("X-Shopify-Topic missing\n", status_code=400)
        return await accept(delivery)

    @app.post("/webhooks/aftership")
    async def aftership(request: Request) -> PlainTextResponse:
        body = await read_body(request)
        if not webhooks.signed_by_any(body, request.headers.get("aftership-hmac-sha256"),
                                      (settings.aftership_webhook_secret,)):
            return refused(request, "aftership")
        return await accept(webhooks.aftership_delivery(body))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            await run_in_threadpool(ping, engine)
        except SQLAlchemyError as exc:
            return JSONResponse({"status": "database unreachable", "error": type(exc).__name__},
                                status_code=503)
        return JSONResponse({"status": "ready"})

    return app


def store_delivery(engine: Engine, delivery: inbox.Delivery, now: datetime) -> None:
    """One delivery, committed before the caller answers 2xx."""
    with session_scope(engine) as session:
        inbox.store(session, [delivery], now)
        fault_point("edge:before_commit")
    fault_point("edge:after_commit")


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def realtime_nudge() -> Callable[[], None]:
    """With a Prefect API to talk to, stored deliveries ask for real-time intake; else nothing
    (the sweep drains the inbox anyway). JOURNEYS_REALTIME=off turns it off."""
    if not os.environ.get("PREFECT_API_URL") or os.environ.get("JOURNEYS_REALTIME") == "off":
        return lambda: None
    from flows.realtime import Nudger

    return Nudger().nudge


def serve(host: str = "127.0.0.1", port: int = 8000, proxy_headers: bool = False,
          forwarded_allow_ips: str | None = None) -> None:
    """Run the edge with uvicorn until stopped (SIGINT/SIGTERM end it cleanly)."""
    import uvicorn

    app = create_app(nudge=realtime_nudge())
    uvicorn.run(app, host=host, port=port, proxy_headers=proxy_headers,
                forwarded_allow_ips=forwarded_allow_ips, log_level="info",
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    serve()
