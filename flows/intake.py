"""The ingest flow: read a file, gate each batch on data quality, store it, account for it."""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_client, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from flows.common import app_engine, batch_size, business_now, publish_manifest, runtime
from flows.parameters import IngestRequest
from tasks import intake
from tasks.archive import download
from tasks.faults import fault_point
from tasks.intake.writers import read, write
from tasks.manifest import intake_manifest
from tasks.quality.gate import GateFailed
from tasks.store.db import session_scope


@task(task_run_name="ingest-{kind}-batch-{batch_no}", cache_policy=NONE)
def ingest_batch(
    kind: str, batch_no: int, records: list[Any], now: datetime
) -> intake.IntakeResult:
    """One batch in one transaction; a batch failing the quality gate stores nothing."""
    with session_scope(app_engine()) as session:
        result = write(kind, session, records, now, runtime())
        fault_point(f"ingest:{kind}:before_commit")
    fault_point(f"ingest:{kind}:after_commit")
    return result


def archive_validations(run_id: str, kind: str, now: datetime, result: intake.IntakeResult) -> str:
    """The GX results of every batch, as one JSON object next to the run's manifest."""
    body = json.dumps({"run_id": run_id, "kind": kind, "batches": result.validations},
                      indent=2, sort_keys=True, default=str).encode()
    key = f"quality/{now:%Y/%m/%d}/ingest-{kind}/{run_id}.json"
    return runtime().archive.put(key, body, "application/json")


def publish_validations(kind: str, result: intake.IntakeResult, ref: str) -> None:
    rows = [{"batch": n, **v["stats"], "success": v["success"]}
            for n, v in enumerate(result.validations, start=1)]
    create_table_artifact(rows, key=f"ingest-{kind}-quality",
                          description=f"Great Expectations results, archived at {ref}")


@contextmanager
def local_copy(request: IngestRequest) -> Iterator[Path]:
    """A path to read: the worker's file itself, or a temporary copy of the pasted text or of
    the s3:// object."""
    url = request.s3_url or (request.source if (request.source or "").startswith("s3://")
                             else None)
    if request.source and not url:
        yield Path(request.source)
        return
    with tempfile.TemporaryDirectory(prefix="journeys-ingest-") as folder:
        if request.text:
            yield pasted_file(request, Path(folder))
        else:
            name = url.rsplit("/", 1)[-1] or "input"
            yield download(url, Path(folder) / name, runtime().settings)


def pasted_file(request: IngestRequest, folder: Path) -> Path:
    """The pasted text as a file (its name says where records came from in quarantine), and
    the text taken out of the run's stored parameters."""
    text = request.text or ""
    path = folder / f"pasted-{request.kind}.txt"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    forget_pasted_text(request)
    return path


def forget_pasted_text(request: IngestRequest) -> None:
    """Prefect keeps a run's parameters: once read, the pasted file (customers' data) is
    replaced there by its size and digest. Outside a deployment's run there is nothing kept."""
    if flow_run.id is None:
        return
    pasted = (request.text or "").encode()
    digest = hashlib.sha256(pasted).hexdigest()[:16]
    kept = request.model_dump(mode="json") | {
        "text": f"(removed once read: {len(pasted):,} bytes pasted, sha-256 {digest}…)"}
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, parameters={"request": kept}).raise_for_status()


def ingest_path(kind: str, path: Path, fmt: str | None, now: datetime) -> dict[str, int]:
    """Every batch of the file through the gate and into the database; then the manifest."""
    total = intake.IntakeResult()
    records = read(kind, path, fmt)
    run_id = str(flow_run.id or uuid.uuid4())
    for batch_no, batch in enumerate(intake.chunks(records, batch_size(None)), start=1):
        try:
            total.add(ingest_batch(kind, batch_no, batch, now))
        except GateFailed as failed:  # keep the evidence, then fail the run loudly
            total.validations.append(failed.result.to_json())
            archive_validations(run_id, kind, now, total)
            raise
    if total.validations:
        publish_validations(kind, total, archive_validations(run_id, kind, now, total))
    publish_manifest(intake_manifest(run_id, f"ingest-{kind}", now, total.as_dict()))
    return total.as_dict()


@flow(name="ingest")
def ingest(request: IngestRequest) -> dict[str, int]:
    """Ingest orders, products, shipments, tracking events or feedback from a file on the
    worker, pasted text or an s3:// URL."""
    with local_copy(request) as path:
        return ingest_path(request.kind, path, request.format, business_now(request.as_of))


if __name__ == "__main__":
    import sys

    print(ingest(IngestRequest(kind=sys.argv[1], source=sys.argv[2])))
