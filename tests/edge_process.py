"""A real `journeys edge` in its own process, for the tests that talk HTTP to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from tasks.webhooks import signature
from tests.conftest import ROOT

SHOPIFY_SECRET = "shpss_test_secret"
SHOPIFY_PREVIOUS = "shpss_old_secret"
AFTERSHIP_SECRET = "aftership-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Edge:
    """One edge process: start, wait until it answers, kill, restart on the same port."""

    def __init__(self, database_url: str, workdir: Path, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"edge-{self.port}.log"
        self.env = {**os.environ, "JOURNEYS_DATABASE_URL": database_url,
                    "JOURNEYS_CONFIG_DIR": str(ROOT / "configs"),
                    "JOURNEYS_SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET,
                    "JOURNEYS_SHOPIFY_WEBHOOK_SECRET_PREVIOUS": SHOPIFY_PREVIOUS,
                    "JOURNEYS_AFTERSHIP_WEBHOOK_SECRET": AFTERSHIP_SECRET,
                    **(extra_env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Edge:
        command = [sys.executable, "-c", "from flows.cli import main; main()", "edge",
                   "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"edge exited {self.process.returncode}: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"edge did not answer within {timeout} s: {self.log_text()}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@contextmanager
def running_edge(database_url: str, workdir: Path, extra_env: dict[str, str] | None = None):
    edge = Edge(database_url, workdir, extra_env).start()
    try:
        yield edge
    finally:
        edge.stop()


def shopify_headers(body: bytes, topic: str, webhook_id: str, secret: str = SHOPIFY_SECRET
                    ) -> dict[str, str]:
    """The headers Shopify sends with a delivery (names as Shopify writes them)."""
    return {"Content-Type": "application/json", "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": signature(body, secret),
            "X-Shopify-Shop-Domain": "journeys-test.myshopify.com",
            "X-Shopify-API-Version": "2025-07", "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Event-Id": "event-" + webhook_id,
            "X-Shopify-Triggered-At": "2026-11-18T09:59:58.123456Z"}


def aftership_headers(body: bytes, secret: str = AFTERSHIP_SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "aftership-hmac-sha256": signature(body, secret)}
