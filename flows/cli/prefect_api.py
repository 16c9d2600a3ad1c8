"""Which Prefect API a command that runs flows talks to, and a temporary one when there is none.

Prefect 3 starts a temporary server the first time a flow is called without PREFECT_API_URL
(`Starting temporary server…`): a subprocess that imports Prefect's whole server before its
first answer, after the CLI process has spent as long importing the flows, Prefect and Great
Expectations. `prefect_api()` keeps the flows exactly as they are (same runs, manifests,
store) and only picks the server first:

1. PREFECT_API_URL is configured (environment, profile, or a test harness): that one.
2. `journeys server` is up on this machine (http://127.0.0.1:4200, with the `journeys` work
   pool its bootstrap makes): that one, as `PREFECT_API_URL=… journeys …` would; the runs show
   in its UI and it already has the `journeys-mail` concurrency limit.
3. Otherwise a temporary server, started *before* the command imports the flows so that the two
   start-ups overlap (on two cores the wait is the longer of them, not their sum), given the
   `journeys-mail` limit (without it every sweep warns that the limit does not exist and waits
   for Prefect to find out), and stopped when the command ends. It runs the same way Prefect's
   own temporary server does (prefect.server.api.server.SubprocessASGIServer, Prefect 3.8.8):
   uvicorn on Prefect's app factory, UI off, on Prefect's database in PREFECT_HOME unless the
   caller gives it one of its own (`journeys simulate`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from flows.cli.common import UserError

LOCAL_SERVER = "http://127.0.0.1:4200/api"  # where `journeys server` serves by default
JOURNEYS_POOL = "journeys"  # infra/bootstrap.py WORK_POOL: the mark of a journeys server
MAIL_LIMIT = "journeys-mail"  # infra/bootstrap.py MAIL_LIMIT
PORT_IN_USE = 3  # uvicorn's exit code when its port was taken between choosing and binding


@contextmanager
def prefect_api(*preload: str, database: Path | None = None) -> Iterator[str]:
    """Run the block against a Prefect API (see the module doc); yields its URL.

    `preload`: modules the command is about to import (the flows), imported here while a
    temporary server starts. `database`: a SQLite file of its own for a temporary server, and
    never a running `journeys server` (a simulation's runs stay out of the operator's UI).
    """
    if configured := configured_api():
        import_all(preload)
        yield configured
        return
    if database is None and is_journeys_server(LOCAL_SERVER):
        note(f"flow runs go to the Prefect server at {LOCAL_SERVER.removesuffix('/api')} "
             "(journeys server)")
        with ExitStack() as stack:
            stack.enter_context(environment({"PREFECT_API_URL": LOCAL_SERVER}))
            import_all(preload)
            stack.enter_context(prefect_settings(LOCAL_SERVER))
            yield LOCAL_SERVER
        return
    note("no Prefect server running: a temporary one for this command (keep `journeys "
         "server` running to skip this and to see the runs in its UI)")
    with temporary_server(database) as server:
        import_all(preload)  # meanwhile the server starts
        if configured := configured_api():  # a profile or prefect.toml names a server after all
            server.stop()
            note(f"Prefect's settings name {configured}: the runs go there instead")
            yield configured
            return
        server.wait_until_healthy()
        with prefect_settings(server.api_url, ui=False):
            ensure_mail_limit()
            try:
                yield server.api_url
            finally:
                deliver_pending()


def configured_api() -> str | None:
    """PREFECT_API_URL as Prefect would resolve it. Before Prefect is imported only the
    environment is read (importing Prefect to look would cost what the overlap saves);
    afterwards Prefect's own settings, which include profiles and a test harness's server."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    if "prefect.settings" not in sys.modules:
        return None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def is_journeys_server(api_url: str) -> bool:
    """A Prefect server answers there and has the journeys work pool (not any other server
    that happens to use Prefect's default port)."""
    return (answers(f"{api_url}/health", timeout=0.5)
            and answers(f"{api_url}/work_pools/{JOURNEYS_POOL}", timeout=2.0))


def answers(url: str, timeout: float) -> bool:
    """GET `url` → 200, directly (an http_proxy setting must not take local calls elsewhere)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):  # refused, timed out, 404, not HTTP
        return False


def import_all(modules: tuple[str, ...]) -> None:
    for module in modules:
        importlib.import_module(module)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """These environment variables for the block (what child processes and flows.common read)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def prefect_settings(api_url: str, ui: bool = True) -> Iterator[None]:
    """Prefect's settings for the block (read once at import, so the environment is not
    enough). Without a UI, no `View at http://…` line points at a server about to stop."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    updates = {PREFECT_API_URL: api_url} | ({} if ui else {PREFECT_UI_URL: ""})
    with temporary_settings(updates=updates):
        yield


def ensure_mail_limit() -> None:
    """The global concurrency limit the sweep's dispatcher asks for (flows/journey.py
    mail_slot), as infra/bootstrap.py ensure_mail_limit makes it on a deployed server (not
    imported from there: it loads Prefect's workers, half a second this command never uses)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(MAIL_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=MAIL_LIMIT, limit=1))


def deliver_pending(timeout: float = 30.0) -> None:
    """Send the run logs and events Prefect still queues to the server before it stops (as
    Prefect's test harness does), else they are lost with an `Error logging to API` line."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout, at_exit=False)
    EventsWorker.drain_all(timeout=timeout, at_exit=False)


def note(text: str) -> None:
    sys.stderr.write(f"journeys: {text}\n")  # stderr: --json output stays one JSON object


class TemporaryServer:
    """Prefect's API in a subprocess on a free local port, until stopped."""

    def __init__(self, database: Path | None):
        self.environment = os.environ | {
            "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1"}
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            self.environment["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
                f"sqlite+aiosqlite:///{database.resolve()}")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        self.port = free_port()
        package = importlib.util.find_spec("prefect")  # its folder, without importing it
        assert package is not None and package.submodule_search_locations
        app_dir = Path(package.submodule_search_locations[0]).parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
             str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=self.environment, stdin=subprocess.DEVNULL)

    def wait_until_healthy(self) -> None:
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120))
        deadline = time.monotonic() + timeout
        while not answers(f"{self.api_url}/health", timeout=2.0):
            assert self.process is not None
            code = self.process.poll()
            if code == PORT_IN_USE:
                self.start()
            elif code is not None:
                raise UserError(f"the temporary Prefect server stopped (exit code {code}); "
                                "start `journeys server` or set PREFECT_API_URL")
            elif time.monotonic() > deadline:
                raise UserError(f"the temporary Prefect server did not answer within "
                                f"{timeout:.0f} s; start `journeys server` or set "
                                "PREFECT_API_URL")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def temporary_server(database: Path | None) -> Iterator[TemporaryServer]:
    server = TemporaryServer(database)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def quiet_run_logs() -> Iterator[None]:
    """Prefect's console shows warnings and errors only (run logs still reach the API): for
    the demo and the simulation, which print their own progress and summary."""
    handlers = [handler for handler in logging.getLogger().handlers
                if type(handler).__name__ == "PrefectConsoleHandler"]
    levels = [handler.level for handler in handlers]
    for handler in handlers:
        handler.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)
