"""The crash matrix's driver: a seeded story through the real flows, SIGKILLed at named points.

`python -m tests.crash_driver SPEC.json RESULT.json` (tests/flows/test_crash_matrix.py runs it
with PREFECT_API_URL pointing at the test Prefect server). The driver imports everything once,
then runs every story step in a forked child — so a child can be killed with SIGKILL at a fault
point (tasks/faults.py) for the price of a fork, not of a new interpreter.

For each seed:
1. The reference: each story step runs in a child that records which fault points it reaches;
   the store (SQLite file + file archive) is snapshotted before and after; the step is then run
   a second time, which must change nothing and send nothing (a same-day rerun is a no-op);
   a catch-up sweep 30 minutes later (what the next frequent sweep does) gives the expected
   store after the step.
2. Each crash case: the snapshot before the step is restored; a child runs the step armed with
   `JOURNEYS_FAULT=<point>@<n>:kill` and must die by SIGKILL; the step is rerun 5 minutes later
   (as a retried or next scheduled run would be), then the catch-up sweep. The store is then
   compared with the reference's, mail delivered is compared with the reference's by
   Message-ID, and the archive reconcile removes what the crash left unreferenced.
Mail goes over SMTP to tests/smtp_sink.py, a real server in its own process that outlives the
children and keeps every delivery, duplicates included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from infra.tooling.bench import story

STEPS = (  # (name, kind, day): the bench's story, compressed
    ("ingest products", "products", 0), ("ingest orders", "orders", 0),
    ("post webhooks", "webhooks", 0), ("sweep day 0", None, 0),
    ("ingest shipments", "shipments", 1), ("ingest events", "events", 3),
    ("sweep day 3", None, 3), ("sweep day 6", None, 6), ("sweep day 10", None, 10),
    ("sweep day 17", None, 17), ("sweep day 34", None, 34),
)
CATCH_UP_SWEEP = STEPS[3]
WEBHOOK_ORDERS = 3  # the story's last orders arrive as Shopify webhooks through the edge
WEBHOOK_SECRET = "crash-webhook-secret"
RERUN_AFTER = timedelta(minutes=5)
API_ATTEMPTS = 3
CATCH_UP_AFTER = timedelta(minutes=30)  # past the outbox's 15-minute send lease
# The documented at-least-once window: a transactional mail sent, its outcome not yet recorded.
RESEND_POINTS = {"dispatch:after_send", "dispatch:after_send:marketing"}
# A claim committed and its process killed: the rows wait for the lease to run out.
LEASE_POINTS = {"dispatch:before_send", "dispatch:after_send", "dispatch:before_send:marketing",
                "dispatch:after_send:marketing"}


class Store:
    """The live workspace every child works in, and snapshots of it."""

    def __init__(self, root: Path) -> None:
        self.live = root / "live"
        self.snapshots = root / "snapshots"
        self.db = self.live / "journeys.db"

    def environment(self, smtp_port: int, batch_size: int) -> dict[str, str]:
        return {"JOURNEYS_DATABASE_URL": f"sqlite:///{self.db}",
                "JOURNEYS_ARTIFACTS_URL": f"file://{self.live / 'artifacts'}",
                "JOURNEYS_MAIL_TRANSPORT": f"smtp://127.0.0.1:{smtp_port}",
                "JOURNEYS_BATCH_SIZE": str(batch_size),
                "JOURNEYS_SHOPIFY_WEBHOOK_SECRET": WEBHOOK_SECRET}

    def save(self, name: str) -> None:
        target = self.snapshots / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.live, target)

    def restore(self, name: str) -> None:
        shutil.rmtree(self.live)
        shutil.copytree(self.snapshots / name, self.live)


# ---------------------------------------------------------------- children


def in_child(action, env: dict[str, str] | None = None, timeout: float = 300.0
             ) -> tuple[str, Any]:
    """Run `action()` in a forked child: ("exited", its JSON-able result) or ("killed", None)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the driver's code
        os.close(read_end)
        code = 0
        try:
            os.environ.update(env or {})
            result = action()
            os.write(write_end, json.dumps(result, default=str).encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
            os.write(write_end, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    output = read_all(read_end, pid, timeout)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed", None
    result = json.loads(output) if output else None
    if os.WEXITSTATUS(status) != 0:
        return "failed", result
    return "exited", result


def read_all(fd: int, pid: int, timeout: float) -> bytes:
    chunks, deadline = [], time.monotonic() + timeout
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError("story step did not finish in time") from None
            time.sleep(0.02)
            continue
        if not chunk:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(chunk)


def step_action(step: tuple, inputs: Path, at: datetime):
    """What a child does for one story step: the real ingest or sweep flow, or the edge."""
    _, kind, _ = step

    def run() -> Any:
        if kind == "webhooks":
            return post_webhooks(inputs / "webhooks.jsonl", at)
        from flows.intake import ingest
        from flows.journey import sweep
        from flows.parameters import IngestRequest, SweepRequest

        if kind is None:
            return sweep(SweepRequest(as_of=at))
        return ingest(IngestRequest(kind=kind, source=str(inputs / f"{kind}.jsonl"), as_of=at))

    return run


def post_webhooks(path: Path, at: datetime) -> int:
    """Shopify delivering orders/create: the edge app served by uvicorn in this child, every
    body posted over HTTP and acknowledged. A rerun after a kill is Shopify's retry: the same
    bodies under the same webhook ids (the ones acknowledged before the kill are duplicates)."""
    import httpx
    import uvicorn

    from flows.edge import create_app
    from tasks.webhooks import signature
    from tests.fixtures_smtp import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(clock=lambda: at), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        for line in path.read_text().splitlines():
            body = line.encode()
            headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
                       "X-Shopify-Hmac-Sha256": signature(body, WEBHOOK_SECRET),
                       "X-Shopify-Webhook-Id": f"crash-{json.loads(line)['id']}"}
            answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/shopify", content=body,
                                headers=headers, timeout=30)
            require(answer.status_code == 200, f"the edge answered {answer.status_code}")
    finally:
        server.should_exit = True
        thread.join(10)
    return sum(1 for _ in path.open())


def world_action(kind: str, inputs: Path, at: datetime):
    """Write the outside world's file (shipments, deliveries) from the store, as the bench does."""

    def run() -> int:
        from infra.tooling import simulation

        make = {"shipments": lambda s: simulation.shipments_for(s, at),
                "events": lambda s: simulation.deliveries_for(s, at)}[kind]
        path = story.world_file(story.Workspace.at(inputs.parent, None), kind, make)
        return sum(1 for _ in path.open())

    return run


def reconcile_action():
    """Delete unreferenced archive objects (no grace: nothing else runs); check every ref."""

    def run() -> dict[str, Any]:
        from sqlalchemy import select

        from flows.common import app_engine, runtime
        from tasks.orphans import indexed_objects, reconcile, unreferenced
        from tasks.store.db import session_scope
        from tasks.store.models import Artifact

        far = datetime.now(UTC) + timedelta(days=1)
        with session_scope(app_engine()) as session:
            removed = reconcile(session, runtime().archive, far).removed
            left = unreferenced(session, indexed_objects(runtime().archive))
            refs = list(session.scalars(select(Artifact.ref)))
        unreadable = [ref for ref in refs if not readable(runtime().archive, ref)]
        return {"removed": len(removed), "left": len(left), "unreadable": len(unreadable)}

    return run


def readable(archive, ref: str) -> bool:
    from tasks.archive import ArchiveError

    try:
        archive.get(ref)
        return True
    except ArchiveError:
        return False


# ---------------------------------------------------------------- what the store holds


def store_picture(db: Path) -> dict[str, Any]:
    """What must match the reference: states, steps, outbox, ledger, documents, the books."""
    queries = {
        "orders": "SELECT source || ':' || external_id, state FROM orders",
        "steps": "SELECT o.external_id || ':' || s.name, s.status FROM steps s "
                 "JOIN orders o ON o.id = s.order_id",
        "messages": "SELECT effect_key, status FROM messages",
        "ledger": "SELECT source_key, points || ' ' || status || ' ' || kind FROM loyalty_ledger",
        "documents": "SELECT o.external_id || ':' || a.kind, count(*) FROM artifacts a "
                     "JOIN orders o ON o.id = a.order_id GROUP BY 1",
        "quarantine": "SELECT kind || ':' || fingerprint, status FROM quarantine",
        "unbalanced_runs": "SELECT run_id, kind FROM run_manifests WHERE NOT balanced",
    }
    with sqlite3.connect(db) as conn:
        picture = {name: dict(conn.execute(sql).fetchall()) for name, sql in queries.items()}
        picture["rows"] = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                           for (t,) in conn.execute(
                               "SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    inbox = db.with_name("inbox.db")  # beside SQLite the edge's inbox is a file of its own
    if inbox.exists():
        with sqlite3.connect(inbox) as conn:
            picture["inbox"] = dict(conn.execute(
                "SELECT provider || ':' || delivery_id, status FROM inbox").fetchall())
        conn.close()
    return picture


def deliveries(spool: Path, after: int) -> list[dict[str, Any]]:
    """Mail the sink received after delivery number `after`: Message-ID and whether marketing."""
    found = []
    for path in sorted(spool.glob("*.eml")):
        if int(path.stem) > after:
            headers = BytesHeaderParser().parsebytes(path.read_bytes())
            found.append({"message_id": headers["Message-ID"],
                          "marketing": headers["List-Unsubscribe"] is not None})
    return found


def delivered_so_far(spool: Path) -> int:
    return max((int(p.stem) for p in spool.glob("*.eml")), default=0)


# ---------------------------------------------------------------- the matrix


class Driver:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.root = Path(spec["root"])
        self.store = Store(self.root)
        self.spool = self.root / "spool"
        self.api_retries = 0

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.store.environment(self.spec["smtp_port"], self.spec["batch_size"]),
                **extra}

    def at(self, step: tuple) -> datetime:
        return story.day(step[2])  # the bench's clock: its input files are placed from it

    def run_step(self, step: tuple, at: datetime, **extra: str) -> tuple[str, Any]:
        """The step in a child; again (up to twice) when the Prefect server could not serve it
        — a busy SQLite-backed test server answers 503 — which is one more rerun, so safe."""
        inputs = self.store.live / "input"
        for _ in range(API_ATTEMPTS - 1):
            done, result = in_child(step_action(step, inputs, at), self.env(**extra))
            if not (done == "failed" and prefect_unavailable(result)):
                return done, result
            self.api_retries += 1
            time.sleep(5)
        return in_child(step_action(step, inputs, at), self.env(**extra))

    def catch_up(self, step: tuple) -> dict[str, Any]:
        """After a sweep step: the next frequent sweep, once a dead claim's lease has run out.
        (Not after an ingest: the story's own sweep of that day comes next.) What it changed."""
        if step[1] is not None:
            return {}
        before, mark = store_picture(self.store.db), delivered_so_far(self.spool)
        done, result = self.run_step(CATCH_UP_SWEEP, self.at(step) + CATCH_UP_AFTER)
        require(done == "exited", f"catch-up sweep after {step[0]}: {done} {result}")
        changed = differences(without_run_books(before),
                              without_run_books(store_picture(self.store.db)), rows=True)
        return {**changed, "mail": len(deliveries(self.spool, mark))} if changed or \
            delivered_so_far(self.spool) > mark else {}

    def reference(self, seed: int) -> list[dict[str, Any]]:
        """Each step once, traced; then again (a no-op); then the catch-up sweep."""
        self.new_store(seed)
        steps = []
        for index, step in enumerate(STEPS):
            if step[1] in ("shipments", "events"):
                inputs = self.store.live / "input"
                in_child(world_action(step[1], inputs, self.at(step)), self.env())
            self.store.save(f"{seed}-before-{index}")
            trace = self.root / f"trace-{seed}-{index}"
            trace.unlink(missing_ok=True)
            first = delivered_so_far(self.spool)
            done, result = self.run_step(step, self.at(step), JOURNEYS_FAULT_TRACE=str(trace))
            require(done == "exited", f"reference {step[0]}: {done} {result}")
            steps.append(self.finish_reference(seed, index, step, first, trace))
        return steps

    def finish_reference(self, seed: int, index: int, step: tuple, first: int, trace: Path
                         ) -> dict[str, Any]:
        after_step = store_picture(self.store.db)
        mark = delivered_so_far(self.spool)
        done, result = self.run_step(step, self.at(step))
        require(done == "exited", f"same-day rerun of {step[0]}: {done} {result}")
        rerun_changes = differences(without_run_books(after_step),
                                    without_run_books(store_picture(self.store.db)), rows=True)
        rerun_mail = len(deliveries(self.spool, mark))
        catch_up = self.catch_up(step)
        self.store.save(f"{seed}-after-{index}")
        hits = Counter(trace.read_text().split()) if trace.exists() else Counter()
        return {"step": step[0], "hits": dict(hits), "picture": store_picture(self.store.db),
                "mail": deliveries(self.spool, first), "rerun_changes": rerun_changes,
                "rerun_mail": rerun_mail, "catch_up": catch_up}

    def new_store(self, seed: int) -> None:
        """An empty store and the bench's input files (products, orders) for this seed."""
        shutil.rmtree(self.store.live, ignore_errors=True)
        self.store.live.mkdir(parents=True)
        files = story.input_files(story.Workspace.at(self.store.live, None),
                                  self.spec["orders"], seed)
        orders = files["orders"].read_text().splitlines(keepends=True)
        files["orders"].write_text("".join(orders[:-WEBHOOK_ORDERS]))
        (files["orders"].parent / "webhooks.jsonl").write_text("".join(orders[-WEBHOOK_ORDERS:]))

    def crash_case(self, seed: int, index: int, point: str, nth: int,
                   expected: dict[str, Any]) -> dict[str, Any]:
        step = STEPS[index]
        self.store.restore(f"{seed}-before-{index}")
        first = delivered_so_far(self.spool)
        done, result = self.run_step(step, self.at(step), JOURNEYS_FAULT=f"{point}@{nth}:kill")
        require(done == "killed", f"{point}@{nth} in {step[0]} was not reached: {done} {result}")
        done, result = self.run_step(step, self.at(step) + RERUN_AFTER)
        require(done == "exited", f"rerun after {point}@{nth} in {step[0]}: {done} {result}")
        if expected["catch_up"] or point in LEASE_POINTS:
            self.catch_up(step)  # else it changes nothing: the reference's did not either
        done, archive = in_child(reconcile_action(), self.env())
        require(done == "exited", f"reconcile after {point}: {done} {archive}")
        return {"seed": seed, "step": step[0], "point": point, "nth": nth,
                **judge(expected, store_picture(self.store.db),
                        deliveries(self.spool, first), point), "archive": archive}

    def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {"references": {}, "cases": []}
        for seed in self.spec["seeds"]:  # (the test runs one driver per seed)
            steps = self.reference(seed)
            results["references"][seed] = [
                {k: s[k] for k in ("step", "hits", "rerun_changes", "rerun_mail", "catch_up")}
                for s in steps]
            only = self.spec.get("points")  # a developer's subset; the test takes them all
            for index, point, nth in cases_for(steps, self.spec["variant"], only):
                results["cases"].append(self.crash_case(seed, index, point, nth, steps[index]))
        return results


def cases_for(steps: list[dict[str, Any]], variant: int, only: list[str] | None = None):
    """Every fault point at the first step that reaches it, and the archive point again where
    packing writes its bundles. Which hit of a point is killed varies with `variant` (the
    first, the second, the last), so crashes land in different batches."""
    position = variant % 3
    points = set(only) if only else {p for step in steps for p in step["hits"]}
    chosen: dict[tuple[int, str], int] = {}
    for point in sorted({p for step in steps for p in step["hits"]} & points):
        for index in steps_for(point, steps):
            hits = steps[index]["hits"][point]
            chosen[(index, point)] = (1, min(2, hits), hits)[position]
    for (index, point), nth in sorted(chosen.items()):
        yield index, point, nth


def steps_for(point: str, steps: list[dict[str, Any]]) -> list[int]:
    reaching = [i for i, step in enumerate(steps) if point in step["hits"]]
    also = []
    if point == "archive:after_put":
        also = [i for i in reaching if "stage:pack:before_commit" in steps[i]["hits"]][:1]
    return sorted(set(reaching[:1] + also))


# ---------------------------------------------------------------- judging


def without_run_books(picture: dict[str, Any]) -> dict[str, Any]:
    """A rerun is a new run: it adds its own manifest row, and nothing else may change."""
    return {**picture, "rows": {t: n for t, n in picture["rows"].items() if t != "run_manifests"}}


def differences(expected: dict[str, Any], found: dict[str, Any], rows: bool = False
                ) -> dict[str, int]:
    """How many entries differ, per part of the picture (row counts only when asked)."""
    parts = [p for p in expected if p != "rows" or rows]
    diff = {}
    for part in parts:
        a, b = expected[part], found[part]
        changed = sum(1 for key in a.keys() | b.keys() if a.get(key) != b.get(key))
        if changed:
            diff[part] = changed
    return diff


def judge(expected: dict[str, Any], picture: dict[str, Any], mail: list[dict[str, Any]],
          point: str) -> dict[str, Any]:
    """Compare a crashed-and-rerun store with the reference; count duplicates and losses."""
    wanted = Counter(m["message_id"] for m in expected["mail"])
    got = Counter(m["message_id"] for m in mail)
    marketing = {m["message_id"] for m in expected["mail"] + mail if m["marketing"]}
    extra = got - wanted
    missing = wanted - got
    lost_marketing = {mid for mid in missing if mid in marketing}
    messages = marketing_unknown_allowed(expected["picture"], picture, point)
    diff = differences(expected["picture"], picture)
    if messages["allowed"]:
        diff["messages"] = diff.get("messages", 0) - messages["allowed"]
        diff = {k: v for k, v in diff.items() if v}
    lost_orders = sum(1 for key, state in expected["picture"]["orders"].items()
                      if picture["orders"].get(key) != state)
    return {
        "lost_orders": lost_orders,
        "store_differences": diff,
        "duplicate_transactional": sum(n for mid, n in extra.items() if mid not in marketing),
        "duplicate_marketing": sum(n for mid, n in extra.items() if mid in marketing),
        "missing_transactional": sum(n for mid, n in missing.items() if mid not in marketing),
        "marketing_unknown": messages["allowed"],  # left unknown, never resent
        "marketing_undelivered": len(lost_marketing),  # of those, killed before the send
        "resend_window": point in RESEND_POINTS,
        "unbalanced_runs": len(picture["unbalanced_runs"]),
    }


def marketing_unknown_allowed(expected: dict[str, Any], found: dict[str, Any], point: str
                              ) -> dict[str, int]:
    """Marketing whose outcome a crash made unknown: `sent` in the reference, `unknown` here.
    At most once means exactly this, and only when the crash fell after the claim's commit."""
    if point not in LEASE_POINTS:
        return {"allowed": 0}
    unknown = [key for key, status in found["messages"].items()
               if status == "unknown" and expected["messages"].get(key) == "sent"]
    return {"allowed": len(unknown)}


def prefect_unavailable(result: Any) -> bool:
    error = (result or {}).get("error", "") if isinstance(result, dict) else ""
    return error.startswith(("PrefectHTTPStatusError: Server error '503", "ConnectError",
                             "ReadTimeout", "ConnectTimeout"))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


# ---------------------------------------------------------------- main


def start_sink(spool: Path, port: int) -> subprocess.Popen:
    sink = subprocess.Popen([sys.executable, "-m", "tests.smtp_sink", str(spool), str(port)],
                            stdout=subprocess.PIPE, text=True)
    require(sink.stdout.readline().strip() == "ready", "the SMTP sink did not start")
    return sink


def warm_imports() -> None:
    """Everything the children need, imported once; nothing may start a thread before fork."""
    import great_expectations  # noqa: F401 - 5-7 s: pay it once, not per child
    import uvicorn  # noqa: F401

    import flows.edge  # noqa: F401
    import flows.intake  # noqa: F401
    import flows.journey  # noqa: F401
    import tasks.orphans  # noqa: F401

    require(threading.active_count() == 1, "a thread started before forking children")


def main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    driver = Driver(spec)
    sink = start_sink(driver.spool, spec["smtp_port"])
    try:
        warm_imports()
        started = time.monotonic()
        results = driver.run()
        results["seconds"] = round(time.monotonic() - started, 1)
        results["prefect_api_retries"] = driver.api_retries
    finally:
        sink.terminate()
        sink.wait(10)
    Path(result_path).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
