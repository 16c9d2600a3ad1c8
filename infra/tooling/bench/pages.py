"""The customer pages under load: pages served per second and latency, on the bench's store.

After a journey run (`journeys bench --orders N --pages SECONDS`) its store holds N orders that
were confirmed, shipped, delivered, surveyed and asked for reviews. A `journeys edge` with two
uvicorn workers serves that store; a load generator requests the links a customer opens — the
order page, the survey with a rating, a review form, preferences and rewards — rotating over
every order, for SECONDS, with `concurrency` requests in flight. wrk when it is installed (C,
one thread), else httpx in this process. Every answer must be 200.

The bench's edge gets a copy of configs/ whose per-address and per-link limits are lifted:
every request comes from 127.0.0.1, which a production edge would throttle to 120 a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import select

from infra.stack import ROOT, free_port
from infra.tooling.bench.webhooks import milliseconds, start_edge
from tasks.links import Purpose, link_url
from tasks.store.db import make_engine, session_scope
from tasks.store.models import Order, OrderLine

SECRET = "bench-pages-secret"
WORKERS = 2
UNLIMITED = "1000000/minute"
WRK_SCRIPT = """
local paths = %(paths)s
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("P95_US %%d\\n", latency:percentile(95)))
end
"""


def measure_pages(seconds: float, workspace_root: Path, database_url: str, workdir: Path,
                  concurrency: int = 16) -> dict[str, Any]:
    """GET the customer pages of the store at `database_url` for `seconds`; the figures."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    paths = customer_paths(database_url, datetime.now(UTC))
    port = free_port()
    env = {**os.environ, "JOURNEYS_DATABASE_URL": database_url, "JOURNEYS_SECRET_KEY": SECRET,
           "JOURNEYS_CONFIG_DIR": str(unlimited_configs(workdir)), "JOURNEYS_REALTIME": "off"}
    process = start_edge(port, env, workdir / "edge.log", workers=WORKERS)
    base = f"http://127.0.0.1:{port}"
    try:
        warm_up(base, paths)
        if shutil.which("wrk"):
            load = run_wrk(base, paths, seconds, concurrency, workdir) | {"generator": "wrk"}
        else:
            load = asyncio.run(fire(base, paths, seconds, concurrency))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    served = load["requests"] - load["failed"]
    return {"seconds": seconds, "concurrency": concurrency, "workers": WORKERS,
            "database": database_url.split(":")[0].split("+")[0], "links": len(paths),
            "served": served, "failed": load["failed"],
            "pages_per_second": round(served / seconds, 1), "ms": load["ms"],
            "generator": load["generator"]}


def customer_paths(database_url: str, now: datetime) -> list[str]:
    """One link of each page per order (a review link per first line), as mails carry them."""
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            orders = session.execute(select(Order.id, Order.customer_id)).all()
            first_lines = dict(session.execute(
                select(OrderLine.order_id, OrderLine.id).where(OrderLine.position == 1)).all())
    finally:
        engine.dispose()
    paths = []
    for order_id, customer_id in orders:
        paths += [link_url("", SECRET, Purpose.ORDER, order_id, now),
                  link_url("", SECRET, Purpose.FEEDBACK, order_id, now) + "?r=4",
                  link_url("", SECRET, Purpose.PREFERENCES, customer_id, now),
                  link_url("", SECRET, Purpose.LOYALTY, customer_id, now)]
        if order_id in first_lines:
            paths.append(link_url("", SECRET, Purpose.REVIEW, order_id, now,
                                  first_lines[order_id]))
    return paths


def unlimited_configs(workdir: Path) -> Path:
    """configs/ with the per-address and per-link limits lifted (see the module's note)."""
    target = workdir / "configs"
    shutil.copytree(ROOT / "configs", target)
    pages = yaml.safe_load((target / "pages.yaml").read_text())
    pages |= {"per_ip_limit": UNLIMITED, "per_token_limit": UNLIMITED}
    (target / "pages.yaml").write_text(yaml.safe_dump(pages))
    return target


def warm_up(base: str, paths: list[str]) -> None:
    """Each kind of page once (templates compiled, pools open); any non-200 stops the bench."""
    for path in paths[:5]:
        answer = httpx.get(base + path, timeout=30)
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path[:8]}… answered {answer.status_code}")


def run_wrk(base: str, paths: list[str], seconds: float, concurrency: int, workdir: Path
            ) -> dict[str, Any]:
    script = workdir / "pages.lua"
    script.write_text(WRK_SCRIPT % {"paths": "{" + ", ".join(json.dumps(p) for p in paths) + "}"})
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--latency",
                           "-s", str(script), base], capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> dict[str, Any]:
    total = int(re.search(r"(\d+) requests in", output).group(1))
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    cuts = {p: _ms(v, u) for p, v, u in
            re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)$", output, re.M)}
    p95 = re.search(r"P95_US (\d+)", output)
    return {"requests": total, "failed": int(failed.group(1)) if failed else 0,
            "ms": {"p50": cuts.get("50"), "p90": cuts.get("90"),
                   "p95": round(int(p95.group(1)) / 1000, 1) if p95 else None,
                   "p99": cuts.get("99")}}


def _ms(value: str, unit: str) -> float:
    return round(float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 1)


async def fire(base: str, paths: list[str], seconds: float, concurrency: int
               ) -> dict[str, Any]:
    """Python load: `concurrency` clients for `seconds`, rotating over the links."""
    latencies: list[float] = []
    failed, counter = 0, iter(range(10**9))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def reader() -> None:
            nonlocal failed
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                answer = await client.get(paths[next(counter) % len(paths)])
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failed += 1

        await asyncio.gather(*(reader() for _ in range(concurrency)))
    cuts = milliseconds(latencies)
    if len(latencies) > 1:
        cuts["p95"] = round(statistics.quantiles(latencies, n=100)[94] * 1000, 1)
    return {"requests": len(latencies) + failed, "failed": failed, "ms": cuts,
            "generator": "python (httpx)"}
