"""What every flow shares: the process-wide runtime and engine, and publishing run manifests."""

from __future__ import annotations

from functools import cache

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from sqlalchemy import Engine

from tasks.manifest import Manifest, record_manifest, require_balanced
from tasks.runtime import Runtime
from tasks.store.db import engine_for, session_scope
from tasks.store.migrate import ensure_schema


@cache
def runtime() -> Runtime:
    """Settings and config are read once per process (a worker runs many flows)."""
    return Runtime.from_settings()


@cache
def app_engine() -> Engine:
    engine = engine_for(runtime().settings.database_url)
    ensure_schema(engine)
    return engine


@task(cache_policy=NONE)
def publish_manifest(manifest: Manifest) -> str:
    """Archive and record the run's books in their own transaction, then insist they balance."""
    with session_scope(app_engine()) as session:
        ref = record_manifest(session, manifest, runtime().archive)
    counts = manifest.counts()
    create_table_artifact([{"count": k, "value": v} for k, v in counts.items()] +
                          [{"count": "archived at", "value": ref}],
                          key=f"{manifest.kind}-manifest", description="Run accounting")
    require_balanced(manifest)
    return ref
