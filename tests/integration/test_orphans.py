"""The archive reconcile: objects no row refers to are deleted once they are old enough.

On the file archive and on a real S3 server (SeaweedFS): what a stage killed between its PUT
and its commit leaves is found and removed; what a row refers to, and what is too young to
judge (a batch may still be committing), stays.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tasks.archive import FileStore, open_store
from tasks.orphans import indexed_objects, reconcile, unreferenced
from tasks.settings import Settings
from tasks.store.db import session_scope
from tasks.store.models import Artifact, RunManifest

LATER = datetime.now(UTC) + timedelta(days=1)  # every object written so far is "old enough"


def refer_to(engine, bundle_refs: dict[str, str], manifest_ref: str, now) -> None:
    with session_scope(engine) as session:
        session.add(Artifact(effect_key="order:1:pack:slip:v1:x", order_id=None, kind="slip",
                             ref=bundle_refs["a/slip.html"], sha256="0" * 64, size=1,
                             created_at=now))
        session.add(RunManifest(run_id="run-1", kind="sweep", at=now, counts={}, balanced=True,
                                ref=manifest_ref))


def fill(store, engine, now) -> set[str]:
    """One referenced bundle and manifest, one orphan of each kind; returns the orphans."""
    kept = store.put_bundle("documents/2026/11/18/pack-kept.zip", {"a/slip.html": b"<p>a</p>"})
    manifest = store.put("manifests/2026/11/18/sweep/run-1.json", b"{}")
    refer_to(engine, kept, manifest, now)
    orphans = {store.put_bundle("documents/2026/11/18/pack-lost.zip", {"b/slip.html": b"b"})
               ["b/slip.html"].split("#")[0],
               store.put("manifests/2026/11/18/sweep/run-2.json", b"{}"),
               store.put("mail/2026/11/18/lost.zip", b"zip")}
    store.put("quality/2026/11/18/sweep/run-2-outbox.json", b"{}")  # run evidence: kept
    return orphans


def test_file_archive_orphans_and_crash_debris_are_removed(engine, tmp_path: Path, now, figure):
    store = FileStore(tmp_path / "archive")
    orphans = fill(store, engine, now)
    debris = tmp_path / "archive" / "documents" / "2026" / "11" / "18" / ".tmp-killed"
    debris.write_bytes(b"half a bundle")  # what a SIGKILL inside a write leaves
    orphans.add(store.ref_for("documents/2026/11/18/.tmp-killed"))

    with session_scope(engine) as session:
        young = reconcile(session, store, written_before=datetime.now(UTC) - timedelta(hours=1))
        assert young.removed == [] and young.too_young == len(orphans)
        done = reconcile(session, store, written_before=LATER)
        assert set(done.removed) == orphans
        assert unreferenced(session, indexed_objects(store)) == []
    assert not debris.exists()
    assert (tmp_path / "archive" / "quality/2026/11/18/sweep/run-2-outbox.json").exists()
    assert store.get(store.ref_for("manifests/2026/11/18/sweep/run-1.json")) == b"{}"
    figure(f"archive reconcile (file, {engine.dialect.name}): {done.checked} objects, "
           f"orphans removed {len(done.removed)}, referenced removed 0, left unreferenced 0")


def test_s3_orphans_are_listed_and_deleted(sqlite_engine, s3_server, now, figure):
    bucket = s3_server.create_bucket("orphans")
    store = open_store(f"s3://{bucket}/journeys",
                       Settings(s3_endpoint_url=s3_server.endpoint_url))
    orphans = fill(store, sqlite_engine, now)
    with session_scope(sqlite_engine) as session:
        done = reconcile(session, store, written_before=LATER)
        assert set(done.removed) == orphans
        assert unreferenced(session, indexed_objects(store)) == []
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "journeys/documents/2026/11/18/pack-kept.zip",
        "journeys/manifests/2026/11/18/sweep/run-1.json",
        "journeys/quality/2026/11/18/sweep/run-2-outbox.json"]
    figure(f"archive reconcile (s3): {done.checked} objects, orphans removed "
           f"{len(done.removed)}, referenced removed 0, left unreferenced 0")
