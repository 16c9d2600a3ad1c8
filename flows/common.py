"""What every flow shares: the process-wide runtime and engine, knobs, clocks, run manifests."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import cache
from typing import Any

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from sqlalchemy import Engine

from tasks.manifest import Manifest, record_manifest, require_balanced
from tasks.runtime import Runtime
from tasks.settings import SecretUnavailable, Settings, get_settings
from tasks.store.db import engine_for, session_scope
from tasks.store.migrate import ensure_schema

# Settings an operator may keep in Prefect Secret blocks instead of the worker's environment.
SECRET_BLOCKS = {"secret_key": "journeys-secret-key", "smtp_password": "journeys-smtp-password"}


@cache
def runtime() -> Runtime:
    """Settings and config are read once per process (a worker runs many flows)."""
    return Runtime.from_settings(with_secret_blocks(get_settings()))


@cache
def app_engine() -> Engine:
    engine = engine_for(runtime().settings.database_url)
    ensure_schema(engine)
    return engine


def with_secret_blocks(settings: Settings) -> Settings:
    """Fill secrets the environment does not set from Prefect Secret blocks (bootstrap makes them).

    Flow runs and, with PREFECT_API_URL set, the CLI read the same blocks, so both sign and
    check links with one key. The environment wins: a developer's shell and the tests never
    depend on a server.
    """
    if not (in_flow_run() or os.environ.get("PREFECT_API_URL")):
        return settings
    found = {field: _secret(block) for field, block in SECRET_BLOCKS.items()
             if f"JOURNEYS_{field.upper()}" not in os.environ}
    found = {field: value for field, value in found.items() if value}
    return settings.model_copy(update=found) if found else settings


def _secret(block_name: str) -> str | None:
    from prefect.blocks.system import Secret

    try:
        return Secret.load(block_name, _sync=True).get()
    except ValueError:  # no such block: this deployment keeps the secret in the environment
        return None
    except httpx.HTTPError as exc:  # never fall back silently to the development key
        raise SecretUnavailable(f"Prefect Secret block {block_name} unreachable ({exc}); set "
                                "the JOURNEYS_* variable in the environment instead") from None


def in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def knob(name: str, default: Any) -> Any:
    """An operator-tunable Variable (journeys_*), read once per run; else `default`."""
    if not in_flow_run():
        return default
    run_id = str(FlowRunContext.get().flow_run.id)
    values = _knobs.setdefault(run_id, {})
    if len(_knobs) > 64:  # a worker process runs one flow at a time; keep only recent runs
        for old_run in list(_knobs)[:-8]:
            _knobs.pop(old_run, None)
    if name not in values:
        from prefect.variables import Variable

        value = Variable.get(name, default=None, _sync=True)
        values[name] = default if value is None else type(default)(value)
    return values[name]


_knobs: dict[str, dict[str, Any]] = {}  # flow run id → Variables read in that run


def business_now(as_of: datetime | None) -> datetime:
    """The clock a run works on: the one it was given, else now (always aware, in UTC)."""
    return (as_of or datetime.now(UTC)).astimezone(UTC)


def scheduled_now(as_of: datetime | None) -> datetime:
    """A scheduled run's business clock is its scheduled start, so a late run keeps its day."""
    if as_of is None and in_flow_run():
        from prefect.runtime import flow_run

        as_of = flow_run.scheduled_start_time
    return business_now(as_of)


def batch_size(requested: int | None) -> int:
    return requested or knob("journeys_batch_size", runtime().settings.batch_size)


@task(cache_policy=NONE)
def publish_manifest(manifest: Manifest) -> str:
    """Archive and record the run's books in their own transaction, then insist they balance."""
    with session_scope(app_engine()) as session:
        ref = record_manifest(session, manifest, runtime().archive)
    counts = manifest.counts()
    create_table_artifact([{"count": k, "value": v} for k, v in counts.items()] +
                          [{"count": "archived at", "value": ref}],
                          key=f"{manifest.kind}-manifest", description="Run accounting")
    if counts.get("unexplained"):
        get_run_logger().error("run does not balance: %s", counts)
    require_balanced(manifest)
    return ref
