"""The edge under load: signed deliveries per second, acknowledgement latency, nothing lost.

A real `journeys edge` process on an empty workspace; a load generator keeps `concurrency`
requests in flight for a number of seconds and times each from send to answer: wrk when it is
installed (Debian's package; C, so it leaves the edge most of a core), else httpx in this
process. Either shares the machine's cores with the edge, as a co-located proxy would.
Afterwards every acknowledged delivery must be in the inbox, once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from infra.stack import ROOT, free_port
from tasks import inbox
from tasks.settings import Settings
from tasks.store.db import make_engine, session_scope
from tasks.store.models import InboxDelivery
from tasks.webhooks import signature

SECRET = "bench-webhook-secret"
TOPIC = "orders/create"


def order_bodies(count: int) -> list[bytes]:
    """Shopify orders/create bodies of a realistic size (~3 KB), each its own order.

    The load sends one body under many delivery ids: each is a separate delivery to store."""
    template = json.loads((ROOT / "tests/fixtures/orders_shopify.jsonl").read_text()
                          .splitlines()[0])
    return [json.dumps(template | {"id": 8_000_000_000 + n, "name": f"#W{n}"}).encode()
            for n in range(count)]


def start_edge(port: int, env: dict[str, str], log: Path, workers: int = 1) -> subprocess.Popen:
    command = [sys.executable, "-c", "from flows.cli import main; main()", "edge",
               "--port", str(port), "--workers", str(workers)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).is_success:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError(f"the edge did not start; see {log}")


async def fire(url: str, body: bytes, seconds: float, concurrency: int
               ) -> tuple[list[float], int]:
    """Python load: `concurrency` senders for `seconds`; (latency per 200, other answers)."""
    latencies: list[float] = []
    failures, sent = 0, itertools.count()
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def sender() -> None:
            nonlocal failures
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                answer = await client.post(url, content=body, headers=headers_for(body, next(sent)))
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return latencies, failures


def headers_for(body: bytes, number: int) -> dict[str, str]:
    return {"X-Shopify-Topic": TOPIC, "X-Shopify-Webhook-Id": f"bench-{number}",
            "X-Shopify-Hmac-Sha256": signature(body, SECRET), "Content-Type": "application/json"}


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Shopify-Topic"] = "%(topic)s"
wrk.headers["X-Shopify-Hmac-Sha256"] = "%(signature)s"
local counter = 0
local prefix = ""
setup = function(thread) thread:set("prefix", tostring(math.random(1, 2^30))) end
request = function()
  counter = counter + 1
  wrk.headers["X-Shopify-Webhook-Id"] = "bench-" .. prefix .. "-" .. counter
  return wrk.format()
end
"""


def run_wrk(url: str, body: bytes, seconds: float, concurrency: int, workdir: Path
            ) -> dict[str, Any]:
    """wrk (C, one thread) as the load: it leaves the edge more of the machine than Python."""
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT % {"body": json.dumps(body.decode()), "topic": TOPIC,
                                    "signature": signature(body, SECRET)})
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--latency",
                           "-s", str(script), url], capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests, refusals and the latency distribution from wrk's --latency report."""
    total = int(re.search(r"(\d+) requests in", output).group(1))
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    found = re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)$", output, re.M)
    cuts = {percent: _ms(value, unit) for percent, value, unit in found}
    return {"requests": total, "refused": int(refused.group(1)) if refused else 0,
            "ack_ms": {"p50": cuts.get("50"), "p90": cuts.get("90"), "p99": cuts.get("99")}}


def _ms(value: str, unit: str) -> float:
    return round(float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 1)


def measure_webhooks(seconds: float, workdir: Path, database_url: str | None = None,
                     concurrency: int = 16) -> dict[str, Any]:
    """Signed orders/create deliveries against a fresh edge for `seconds`; figures and a check."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    database_url = database_url or f"sqlite:///{workdir.resolve() / 'journeys.db'}"
    env = {**os.environ, "JOURNEYS_DATABASE_URL": database_url,
           "JOURNEYS_SHOPIFY_WEBHOOK_SECRET": SECRET, "JOURNEYS_REALTIME": "off"}
    port, body = free_port(), order_bodies(1)[0]
    url = f"http://127.0.0.1:{port}/webhooks/shopify"
    process = start_edge(port, env, workdir / "edge.log")
    try:
        if shutil.which("wrk"):
            load = run_wrk(url, body, seconds, concurrency, workdir) | {"generator": "wrk"}
        else:
            latencies, refused = asyncio.run(fire(url, body, seconds, concurrency))
            load = {"requests": len(latencies) + refused, "refused": refused,
                    "ack_ms": milliseconds(latencies), "generator": "python (httpx)"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    accepted = load["requests"] - load["refused"]
    stored = stored_deliveries(Settings(database_url=database_url))
    # A request still in flight when the load stops may be stored without being counted, so
    # more stored than acknowledged is possible; fewer is a loss.
    return {"seconds": seconds, "concurrency": concurrency, "generator": load["generator"],
            "database": database_url.split(":")[0].split("+")[0], "accepted": accepted,
            "refused": load["refused"], "accepted_per_second": round(accepted / seconds, 1),
            "ack_ms": load["ack_ms"], "stored": stored, "lost": max(0, accepted - stored)}


def milliseconds(latencies: list[float]) -> dict[str, float | None]:
    """p50, p90 and p99 of the acknowledgement times, in milliseconds."""
    if len(latencies) < 2:
        return {"p50": None, "p90": None, "p99": None}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": round(cuts[49] * 1000, 1), "p90": round(cuts[89] * 1000, 1),
            "p99": round(cuts[98] * 1000, 1)}


def stored_deliveries(settings: Settings) -> int:
    """Distinct bench deliveries in the inbox (the warm-up's 200 are repeats of the same ids)."""
    engine = make_engine(inbox.inbox_url(settings))
    try:
        with session_scope(engine) as session:
            return session.scalar(select(func.count()).select_from(InboxDelivery).where(
                InboxDelivery.delivery_id.like("bench-%")))
    finally:
        engine.dispose()
