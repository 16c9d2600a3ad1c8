"""The one-command local stack: a Prefect server, the journeys deployments and workers.

`journeys deploy` calls `deploy()`; `journeys server` calls `run_stack()`. The server keeps its
state in SQLite under PREFECT_HOME unless given a PostgreSQL URL (`prefect_db_url` or
JOURNEYS_PREFECT_DATABASE_URL). Workers inherit this process's environment, so JOURNEYS_*
settings reach every flow run; JOURNEYS_HOME (default: this checkout) tells them where the code
is (see infra/prefect.yaml).

    python -m infra.stack server [PORT]     # until Ctrl-C
    python -m infra.stack deploy            # against PREFECT_API_URL
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import IO

import httpx
import yaml
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.objects import ConcurrencyOptions
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectNotFound
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.callables import parameter_schema
from sqlalchemy.engine import make_url

from infra.bootstrap import HEARTBEAT_ENV, HEARTBEAT_SECONDS, WORK_POOL, bootstrap
from tasks.config import check_config
from tasks.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = ROOT / "infra" / "prefect.yaml"
PREFECT = (sys.executable, "-m", "prefect")
# `prefect` as above, in a process whose SQLite transactions take the write lock at BEGIN.
PREFECT_SERVER = (sys.executable, "-c", "from infra.stack import serve_prefect; serve_prefect()")
Report = Callable[[str], None]


class StackError(RuntimeError):
    """The stack could not start or deploy; the message says which part and why."""


def deploy(api_url: str | None = None, report: Report = print) -> list[str]:
    """Check the business config, bootstrap the server, then create or update every
    deployment in infra/prefect.yaml.

    Returns the deployment names ('journey-sweep/frequent' ...). Bootstrap lines and skipped
    deployments go to `report`. `api_url` defaults to PREFECT_API_URL.

    It does what `prefect --no-prompt deploy --all --prefect-file infra/prefect.yaml` does,
    through the client: that command fails on prefect 3.8.8 with fastapi >= 0.151 (after
    creating the first deployment it lists workers with a JSON null `limit`; the server
    answers 422), and it costs a second process that imports every flow again.
    """
    check_business_config()
    api_url = api_url or PREFECT_API_URL.value()
    if not api_url:
        raise StackError("no Prefect server: start one (`journeys server`) or set PREFECT_API_URL")
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for line in bootstrap(client):
            report(line)
        config = yaml.safe_load(PREFECT_FILE.read_text())
        deployed = [apply_deployment(client, spec, config["pull"])
                    for spec in deployable_specs(config, report)]
        retire_old_names(client, deployed, report)
        return deployed


RETIRED_NAMES = ("on-demand",)  # what earlier prefect.yaml files called several deployments


def retire_old_names(client: SyncPrefectClient, deployed: list[str], report: Report) -> None:
    """Remove a journeys flow's deployment under a retired name once it is deployed under its
    new one, so an upgraded server keeps no duplicate (and no second 09:00 form); the flow
    runs it made stay."""
    for name in deployed:
        flow = name.split("/", 1)[0]
        for retired in (f"{flow}/{old}" for old in RETIRED_NAMES):
            if retired in deployed:
                continue
            try:
                stale = client.read_deployment_by_name(retired)
            except ObjectNotFound:
                continue
            client.delete_deployment(stale.id)
            report(f"deployment {retired}: removed (now {name})")


def check_business_config() -> None:
    """The configs/*.yaml the workers will load, checked before anything is deployed, so a typo
    stops the deploy instead of the first run that reads the file."""
    config_dir = get_settings().config_dir
    home = Path(os.environ.get("JOURNEYS_HOME", ROOT))  # where workers resolve a relative path
    problems = check_config(config_dir if config_dir.is_absolute() else home / config_dir)
    if problems:
        raise StackError("config invalid, nothing deployed:\n" + "\n".join(problems))


def deployable_specs(config: dict, report: Report) -> list[dict]:
    """The deployments whose flow module exists in this checkout (others are reported)."""
    specs = []
    for spec in config["deployments"]:
        module = spec["entrypoint"].rsplit(".", 1)[0]
        if importlib.util.find_spec(module) is not None:
            specs.append(spec)
        else:
            report(f"deployment of {spec['entrypoint']}: skipped, no module {module} here")
    return specs


def apply_deployment(client: SyncPrefectClient, spec: dict, pull_steps: list[dict]) -> str:
    """Create or update (the server upserts by flow and name) one prefect.yaml deployment."""
    flow = load_flow_from_entrypoint(spec["entrypoint"])
    pool = spec["work_pool"]
    limit = concurrency_of(spec)
    paused = paused_schedules(client, f"{flow.name}/{spec['name']}")
    client.create_deployment(
        flow_id=client.create_flow_from_name(flow.name),
        name=spec["name"], entrypoint=spec["entrypoint"], description=spec.get("description"),
        tags=spec.get("tags", []), parameters=spec.get("parameters", {}),
        parameter_openapi_schema=parameter_schema(flow).model_dump(exclude_unset=True),
        enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
        schedules=[schedule_from(entry, paused) for entry in spec.get("schedules", [])],
        concurrency_limit=limit.get("limit"), concurrency_options=limit.get("options"),
        work_pool_name=pool["name"], work_queue_name=pool.get("work_queue_name"),
        job_variables=pool.get("job_variables", {}), pull_steps=pull_steps,
    )
    return f"{flow.name}/{spec['name']}"


def concurrency_of(spec: dict) -> dict:
    """`concurrency_limit: N` or `{limit: N, collision_strategy: ...}` → create_deployment args."""
    config = spec.get("concurrency_limit")
    if config is None:
        return {}
    if isinstance(config, int):
        return {"limit": config}
    strategy = config.get("collision_strategy")
    return {"limit": config["limit"],
            "options": ConcurrencyOptions(collision_strategy=strategy) if strategy else None}


def paused_schedules(client: SyncPrefectClient, name: str) -> set[str]:
    """Slugs of the deployment's schedules an operator paused: deploying again keeps them so."""
    try:
        deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        return set()
    return {s.slug for s in deployment.schedules if s.slug and not s.active}


def schedule_from(entry: dict, paused: set[str] = frozenset()) -> DeploymentScheduleCreate:
    """A prefect.yaml schedule: `cron` (with `timezone`) or `interval` in seconds."""
    if "cron" in entry:
        schedule = CronSchedule(cron=entry["cron"], timezone=entry.get("timezone", "UTC"))
    else:
        schedule = IntervalSchedule(interval=timedelta(seconds=entry["interval"]))
    return DeploymentScheduleCreate(
        schedule=schedule, active=entry.get("active", True) and entry.get("slug") not in paused,
        slug=entry.get("slug"),
        parameters=entry.get("parameters", {}))


def serve_prefect() -> None:
    """The `prefect` command line (`server start ...` from argv), its SQLite made safe for
    concurrent writers first (`immediate_sqlite_transactions`)."""
    immediate_sqlite_transactions()
    from prefect.cli import app

    app()


def immediate_sqlite_transactions() -> None:
    """Every transaction the Prefect server opens on SQLite begins IMMEDIATE, as ours do
    (tasks/store/db.py); PostgreSQL is untouched.

    Prefect 3.8.8 begins IMMEDIATE only when a caller asks for row locks; every other write
    begins DEFERRED: it reads (an automation's bucket, a work pool), then writes. If another
    connection wrote in between, SQLite cannot upgrade the read snapshot and answers "database
    is locked" at once, whatever the busy timeout. The server logged such tracebacks from its
    services, and when the triggers service lost a flow run's Completed event that way (four
    tries, then the dead-letter queue) the lost-runs automation saw no end after the last
    heartbeat and tried to mark the completed run Crashed. Taking the lock at BEGIN makes
    writers queue on the 60 s busy timeout instead.
    """
    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred = AioSqliteConfiguration.begin_transaction
    if getattr(deferred, "immediate", False):
        return

    @contextlib.asynccontextmanager
    async def begin_immediate(self, session, with_for_update: bool = False):
        async with deferred(self, session, with_for_update=True) as transaction:
            yield transaction

    begin_immediate.immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_immediate  # type: ignore[method-assign]


def prefect_env(api_url: str) -> dict[str, str]:
    """This process's environment, pointed at one Prefect server, with analytics off."""
    return os.environ | {"PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def asyncpg_url(url: str) -> str:
    """Prefect's server reaches PostgreSQL through asyncpg, whatever driver the URL names."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalStack:
    """A Prefect server, the deployments and N workers on this machine, stopped together.

    Use as a context manager. Children run in their own sessions so a terminal's Ctrl-C reaches
    only this process, which then stops workers first (they finish their runs within
    `worker_grace` seconds or are killed with their flow runs), then the server.
    """

    worker_grace = 20.0
    server_grace = 15.0
    startup_timeout = 180.0

    def __init__(self, port: int = 4200, prefect_db_url: str | None = None, workers: int = 1,
                 env: dict[str, str] | None = None, log_dir: Path | None = None,
                 report: Report = print, edge_port: int | None = None):
        self.port = port
        self.edge_port = edge_port  # None: no edge and no real-time task worker
        self.prefect_db_url = prefect_db_url or os.environ.get("JOURNEYS_PREFECT_DATABASE_URL")
        self.worker_count = workers
        self.env = dict(env or {})  # extra environment for workers and so for flow runs
        self.log_dir = log_dir
        self.report = report
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.services: dict[str, subprocess.Popen] = {}  # the edge, the real-time task worker
        self.deployments: list[str] = []
        self._logs: list[IO] = []

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Server, health, deploy, workers; whatever started is stopped again if a step fails."""
        try:
            started = time.monotonic()
            self.server = self._spawn("server", self._server_command(), self._server_env())
            self._wait_until_healthy()
            self.report(f"Prefect server up in {time.monotonic() - started:.1f}s: {self.ui_url}")
            self.deployments = deploy(self.api_url, report=self.report)
            for _ in range(self.worker_count):
                self.add_worker()
            for name in self.service_commands():
                self.start_service(name)
            if self.edge_port is not None:
                self._wait_for_edge()
        except BaseException:
            self.stop()
            raise

    def add_worker(self) -> subprocess.Popen:
        """One more `prefect worker start --pool journeys`, polling every 2 seconds."""
        number = len(self.workers) + 1
        worker = self._spawn(f"worker-{number}", self._worker_command(number), self.worker_env())
        self.workers.append(worker)
        return worker

    def service_commands(self) -> dict[str, list[str]]:
        """The edge (webhooks in) and the task worker that turns them into mail in seconds."""
        if self.edge_port is None:
            return {}
        edge = [sys.executable, "-c", "from flows.cli import main; main()", "edge",
                "--port", str(self.edge_port)]
        return {"edge": edge, "realtime": [sys.executable, "-m", "flows.realtime"]}

    def start_service(self, name: str) -> None:
        self.services[name] = self._spawn(name, self.service_commands()[name], self.worker_env())

    def worker_env(self) -> dict[str, str]:
        env = prefect_env(self.api_url) | self.env
        env.setdefault("JOURNEYS_HOME", str(ROOT))
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "2")
        # Flow runs send heartbeats as often as the "journeys: lost runs" automation expects
        # (the pool's job template says so too; this covers a pool made before it did).
        env.setdefault(HEARTBEAT_ENV, str(HEARTBEAT_SECONDS))
        return env

    def watch(self, poll_seconds: float = 2.0) -> None:
        """Block while the server runs; a worker that exits is started again."""
        while True:
            if self.server is None or self.server.poll() is not None:
                raise StackError(f"the Prefect server exited ({self._exit_code(self.server)})")
            for index, worker in enumerate(self.workers):
                if worker.poll() is not None:
                    self.report(f"worker {index + 1} exited ({worker.returncode}); restarting it")
                    self.workers[index] = self._spawn(
                        f"worker-{index + 1}", self._worker_command(index + 1), self.worker_env())
            for name, service in list(self.services.items()):
                if service.poll() is not None:
                    self.report(f"{name} exited ({service.returncode}); restarting it")
                    self.start_service(name)
            time.sleep(poll_seconds)

    def stop(self) -> None:
        """Flow runs, then workers, then the server, each within its grace period; no orphans.

        A second Ctrl-C (or SIGTERM, SIGHUP) while stopping is ignored, so it cannot abandon
        children that run in their own sessions.
        """
        with _stop_signals_ignored():
            self._stop_all()

    def _stop_all(self) -> None:
        self.stop_flow_runs()
        for worker in self.workers:
            _signal_group(worker, signal.SIGTERM)
        for worker in self.workers:
            _reap(worker, self.worker_grace)
        self.workers = []
        for service in self.services.values():
            _signal_group(service, signal.SIGTERM)
        for service in self.services.values():
            _reap(service, self.worker_grace)
        self.services = {}
        if self.server is not None:
            _signal_group(self.server, signal.SIGTERM)
            _reap(self.server, self.server_grace)
            self.server = None
        for log in self._logs:
            log.close()
        self._logs = []

    def stop_flow_runs(self) -> None:
        """SIGTERM the workers' flow runs so they report Crashed before the server goes.

        A worker that is stopped kills its flow runs without telling the server, which then
        shows them Running until someone cancels them by hand.
        """
        runs = set().union(*(_descendants(worker.pid) for worker in self.workers))
        for pid, _ in runs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.worker_grace
        while _alive(runs) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, _ in _alive(runs):  # a run that ignored SIGTERM past the grace period
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _server_command(self) -> list[str]:
        return [*PREFECT_SERVER, "server", "start", "--host", "127.0.0.1", "--port",
                str(self.port)]

    def _worker_command(self, number: int) -> list[str]:
        name = f"{socket.gethostname()}-{self.port}-{number}"
        return [*PREFECT, "worker", "start", "--pool", WORK_POOL, "--name", name]

    def _server_env(self) -> dict[str, str]:
        env = prefect_env(self.api_url) | {"PREFECT_UI_API_URL": self.api_url}
        if self.prefect_db_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = asyncpg_url(self.prefect_db_url)
        return env

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        output = None
        if self.log_dir is not None:
            output = open(Path(self.log_dir) / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
            self._logs.append(output)
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=output,
                                stderr=subprocess.STDOUT if output else None,
                                start_new_session=True)

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise StackError(f"the Prefect server exited while starting "
                                 f"({self._exit_code(self.server)}){self._log_hint('server')}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise StackError(f"the Prefect server did not answer within {self.startup_timeout:.0f}s"
                         f"{self._log_hint('server')}")

    def _wait_for_edge(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.services["edge"].poll() is not None:
                raise StackError(f"the edge exited while starting "
                                 f"({self._exit_code(self.services['edge'])}){self._log_hint('edge')}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.edge_port}/readyz", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise StackError(f"the edge did not answer within {self.startup_timeout:.0f}s"
                         f"{self._log_hint('edge')}")

    def wait_for_realtime(self, timeout: float = 120.0) -> None:
        """Until the real-time task worker has imported everything and subscribed (its log
        says so; needs `log_dir`): before that a webhook waits for the next sweep."""
        log = Path(self.log_dir or ".") / "realtime.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and "Subscribing to runs" in log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise StackError(f"the real-time task worker did not start within {timeout:.0f}s: {log}")

    def _log_hint(self, name: str) -> str:
        if self.log_dir is None:
            return ""
        return f"; see {Path(self.log_dir) / f'{name}.log'}"

    @staticmethod
    def _exit_code(process: subprocess.Popen | None) -> str:
        return "never started" if process is None else f"exit code {process.returncode}"


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal a child's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _reap(process: subprocess.Popen, grace: float) -> None:
    """Give a signalled child and what runs below it `grace` seconds, then kill what is left.

    Flow runs lead their own sessions, so a group signal misses them: they may finish after
    their worker exits, until the same deadline, and are then killed one by one.
    """
    deadline = time.monotonic() + grace
    below = _descendants(process.pid)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        below |= _descendants(process.pid)
        _signal_group(process, signal.SIGKILL)
        process.wait()
    while _alive(below) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in _alive(below):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those still running: same pid and same start time (not a reused pid)."""
    return {(pid, started) for pid, started in processes if _start_time(pid) == started}


def _descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every live process below `pid`, from /proc (empty without it)."""
    children: dict[str, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat.parent.name)
        if fields:
            children.setdefault(fields[1], []).append(stat.parent.name)
    found, todo = set(), [str(pid)]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add((int(child), _start_time(int(child))))
            todo.append(child)
    return found


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or []."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> str:
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else ""


def run_stack(port: int = 4200, prefect_db_url: str | None = None, workers: int = 1,
              report: Report = print, edge_port: int | None = 8000) -> None:
    """Run the stack in the foreground until Ctrl-C, SIGTERM or SIGHUP: `journeys server`."""
    previous = {signum: signal.signal(signum, _interrupt)
                for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with LocalStack(port, prefect_db_url, workers, report=report,
                        edge_port=edge_port) as stack:
            edge = f"  edge http://127.0.0.1:{edge_port}" if edge_port else ""
            report(f"journeys: UI {stack.ui_url}  API {stack.api_url}  workers {workers}{edge}; "
                   f"Ctrl-C stops everything")
            stack.watch()
    except KeyboardInterrupt:
        report("journeys: stopped")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _stop_signals_ignored():
    """Ignore Ctrl-C, SIGTERM and SIGHUP for the block (signals belong to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in names}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum, frame) -> None:
    """SIGTERM takes the same way out as Ctrl-C: through LocalStack.__exit__."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    if sys.argv[1:2] == ["deploy"]:
        print("\n".join(deploy()))
    elif sys.argv[1:2] == ["server"]:
        run_stack(port=int(sys.argv[2]) if len(sys.argv) > 2 else 4200)
    else:
        sys.exit("usage: python -m infra.stack deploy | server [PORT]")
