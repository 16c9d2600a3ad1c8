"""Archive objects that nothing refers to — what a crash between a PUT and its commit leaves.

A stage writes its bundle, then commits the rows that point into it. A process killed between
the two leaves an object no row refers to; its rerun writes the documents again, often under
another content-addressed key (they carry a later date). `reconcile` finds such objects under
the prefixes the database indexes, plus the `.tmp-*` files a write cut short leaves in a file
archive, and deletes those written before `written_before`: younger ones may belong to a batch
that has not committed yet, so callers pass the store's clock minus a grace period.

Objects an unfinished erasure still lists as stale are its to delete, not ours. Quality reports
(`quality/`) are left alone: each belongs to a run (its key holds the run id), a failed or
crashed run's included — they are the evidence of what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.archive import ArtifactStore, StoredObject, split_member_ref
from tasks.store.models import Artifact, Erasure, Message, RunManifest

INDEXED_PREFIXES = ("documents/", "mail/", "manifests/")
GRACE = timedelta(hours=1)  # far longer than a batch holds its transaction


@dataclass
class Reconciled:
    checked: int = 0  # objects under the indexed prefixes
    too_young: int = 0  # unreferenced, but possibly a batch still committing
    removed: list[str] = field(default_factory=list)  # refs of orphans deleted (or to delete)

    def as_dict(self) -> dict[str, int]:
        return {"checked": self.checked, "too_young": self.too_young, "removed": len(self.removed)}


def referenced_objects(session: Session) -> set[str]:
    """Every archive object a row points at (a member ref counts for its bundle)."""
    refs: set[str] = set()
    for column in (Artifact.ref, Message.artifact_ref, RunManifest.ref):
        for ref in session.scalars(select(column).where(column.is_not(None)).distinct()):
            refs.add(split_member_ref(ref)[0])
    for stale in session.scalars(select(Erasure.stale_objects)):
        refs.update(stale or [])
    return refs


def indexed_objects(store: ArtifactStore) -> list[StoredObject]:
    """Everything under the prefixes the database indexes, listed once."""
    return [obj for prefix in INDEXED_PREFIXES for obj in store.objects(prefix)]


def unreferenced(session: Session, stored: list[StoredObject]) -> list[StoredObject]:
    """The stored objects (`indexed_objects`) that no row points at, whatever their age."""
    refs = referenced_objects(session)
    return [obj for obj in stored if obj.ref not in refs]


def reconcile(session: Session, store: ArtifactStore, written_before: datetime,
              dry_run: bool = False) -> Reconciled:
    """Delete unreferenced objects written before `written_before`; count what was seen."""
    stored = indexed_objects(store)  # one listing: an S3 prefix may be many pages
    result = Reconciled(checked=len(stored))
    for obj in unreferenced(session, stored):
        if obj.written_at >= written_before:
            result.too_young += 1
            continue
        if not dry_run:
            store.delete(obj.ref)
        result.removed.append(obj.ref)
    return result
