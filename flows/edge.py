"""The edge: one ASGI app that takes webhooks in (`journeys edge`, and `journeys server`).

A delivery is acknowledged only once it is stored in the inbox (tasks/inbox.py); the sweep
drains the inbox. Signatures are checked on the raw bytes before anything parses them; a
request that fails the check gets 401 and its body is neither parsed nor logged. Stateless:
several edges can run behind one proxy.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from flows import pages
from tasks import inbox, sns, webhooks
from tasks.config import load_config
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
    """The edge app over the inbox database that `settings` name (default: the environment),
    with the customer pages (flows/pages) over the app database.

    `nudge` is called after each stored delivery (flows/realtime.py: ask for real-time intake).
    """
    settings = settings or get_settings()
    engine = inbox.inbox_engine(inbox.inbox_url(settings), settings.database_url)
    limiter, refusals = MovingWindowRateLimiter(MemoryStorage()), REFUSED_LIMIT
    app = FastAPI(title="journeys edge", docs_url=None, redoc_url=None, openapi_url=None)
    pages.mount(app, load_config(settings.config_dir), settings.secret_key, settings.database_url,
                clock, settings)

    def refused(request: Request, provider: str) -> PlainTextResponse:
        client = request.client.host if request.client else "unknown"
        if not limiter.hit(refusals, client):
            return PlainTextResponse("too many refused requests\n", status_code=429,
                                     headers={"Retry-After": "60"})
        log.warning("%s webhook refused: missing or wrong signature (client %s)", provider, client)
        return PlainTextResponse("signature missing or wrong\n", status_code=401)

    writer = GroupWriter(engine, clock)

    async def accept(delivery: inbox.Delivery) -> PlainTextResponse:
        try:
            await writer.store(delivery)
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

    certificates = sns.Certificates.from_setting(settings.sns_certificates)
    topics = sns.topic_arns(settings.sns_topic_arns)

    @app.post("/webhooks/ses")
    async def ses(request: Request) -> PlainTextResponse:
        """SES notifications through an SNS HTTP(S) subscription (signed by SNS, not by HMAC)."""
        body = await read_body(request)
        try:  # a certificate may have to be fetched: off the event loop
            message = await run_in_threadpool(sns.verified, body, certificates, topics, clock())
        except sns.Refused as exc:
            answer = refused(request, "ses")
            if answer.status_code == 401:
                log.warning("ses webhook refused: %s", exc)  # fixed text, never the body
            return answer
        delivery = sns.ses_delivery(body, message)
        if message["Type"] == "SubscriptionConfirmation":  # the operator confirms, not the edge
            log.warning("SNS subscription to %s waits for confirmation: visit %s",
                        message["TopicArn"], message.get("SubscribeURL"))
        return await accept(delivery)

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


class GroupWriter:
    """Deliveries that arrive together are committed together (group commit).

    Each request waits for the commit of the transaction holding its delivery, so nothing is
    acknowledged before it is durable; under load one transaction carries many deliveries
    instead of one each. A failed commit fails every request in it (503: they are retried).
    """

    max_batch = 500

    def __init__(self, engine: Engine, clock: Callable[[], datetime]):
        self.engine, self.clock = engine, clock
        self.queue: queue.SimpleQueue[tuple[inbox.Delivery, asyncio.Future, Any]] = (
            queue.SimpleQueue())
        threading.Thread(target=self._run, name="inbox-writer", daemon=True).start()

    async def store(self, delivery: inbox.Delivery) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.queue.put((delivery, done, loop))
        await done

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get())
            try:
                store_deliveries(self.engine, [d for d, _, _ in batch], self.clock())
                failure = None
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                failure = exc
            for _, done, loop in batch:
                loop.call_soon_threadsafe(_settle, done, failure)


def _settle(done: asyncio.Future, failure: BaseException | None) -> None:
    if done.cancelled():  # the client went away; the delivery is stored (or not) regardless
        return
    if failure is None:
        done.set_result(None)
    else:
        done.set_exception(failure)


def store_deliveries(engine: Engine, deliveries: list[inbox.Delivery], now: datetime) -> None:
    """Deliveries, committed before any of their senders is answered 2xx."""
    with session_scope(engine) as session:
        inbox.store(session, deliveries, now)
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


def app_from_environment() -> FastAPI:
    """The app uvicorn builds in each worker process (settings from the environment).

    The objects made at start-up (modules, the app, SQLAlchemy's tables) are moved out of the
    garbage collector's reach: full collections over them were the edge's slowest answers.
    """
    from flows.common import with_secret_blocks

    app = create_app(with_secret_blocks(get_settings()), nudge=realtime_nudge())
    gc.collect()
    gc.freeze()
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, proxy_headers: bool = False,
          forwarded_allow_ips: str | None = None, workers: int = 1) -> None:
    """Run the edge with uvicorn until stopped (SIGINT/SIGTERM end it cleanly).

    With `workers` > 1 uvicorn runs that many processes on one socket; each commits its own
    deliveries and keeps its own refusal counts (so the per-client limit is per process).
    """
    import uvicorn

    uvicorn.run("flows.edge:app_from_environment", factory=True, workers=workers,
                host=host, port=port, proxy_headers=proxy_headers,
                forwarded_allow_ips=forwarded_allow_ips, log_level="info",
                timeout_graceful_shutdown=10)


if __name__ == "__main__":
    serve()
