"""Run accounting: every run says what it received and what became of each record.

received = processed + quarantined + deferred + duplicates, with zero unexplained. A run whose
books do not balance is recorded as such, archived, and then fails loudly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.archive import ArtifactStore
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import RunManifest

ACCOUNTED = ("processed", "quarantined", "deferred", "duplicates")


class UnbalancedRun(RuntimeError):
    """A run's manifest does not add up: some input is unexplained."""


@dataclass
class Manifest:
    run_id: str
    kind: str
    at: datetime
    received: int = 0
    processed: int = 0
    quarantined: int = 0
    deferred: int = 0
    duplicates: int = 0

    @property
    def unexplained(self) -> int:
        return self.received - sum(getattr(self, name) for name in ACCOUNTED)

    def counts(self) -> dict[str, int]:
        names = ("received", *ACCOUNTED)
        return {name: getattr(self, name) for name in names} | {"unexplained": self.unexplained}

    def to_json(self) -> bytes:
        body = asdict(self) | {"at": self.at.isoformat(), "unexplained": self.unexplained}
        return json.dumps(body, indent=2, sort_keys=True).encode()

    def archive_key(self) -> str:
        return f"manifests/{self.at:%Y/%m/%d}/{self.kind}/{self.run_id}.json"


def intake_manifest(run_id: str, kind: str, at: datetime, counts: dict[str, int]) -> Manifest:
    """From intake's counts: accepted and updated records are the processed ones."""
    return Manifest(
        run_id, kind, at, received=counts["received"],
        processed=counts["accepted"] + counts["updated"], quarantined=counts["quarantined"],
        duplicates=counts["duplicates"], deferred=counts.get("deferred", 0),
    )


def record_manifest(session: Session, manifest: Manifest, archive: ArtifactStore) -> str:
    """Archive the manifest and store its row (balanced or not); returns the archive ref."""
    ref = archive.put(manifest.archive_key(), manifest.to_json(), "application/json")
    row = {"run_id": manifest.run_id, "kind": manifest.kind, "at": manifest.at,
           "counts": manifest.counts(), "balanced": manifest.unexplained == 0, "ref": ref}
    insert_ignoring_duplicates(session, RunManifest, [row], ["run_id"])
    return ref


def require_balanced(manifest: Manifest) -> None:
    """Fail loudly; call after the manifest is recorded, so the evidence survives."""
    if manifest.unexplained:
        raise UnbalancedRun(
            f"run {manifest.run_id} ({manifest.kind}) does not balance: {manifest.counts()}"
        )


def latest_manifests(session: Session) -> dict[str, dict[str, Any]]:
    """The newest manifest of each kind of run, for `journeys report`."""
    newest = select(func.max(RunManifest.id)).group_by(RunManifest.kind)
    latest = {row.kind: row for row in session.scalars(
        select(RunManifest).where(RunManifest.id.in_(newest)))}
    return {
        kind: {**row.counts, "at": row.at.isoformat(), "run_id": row.run_id, "ref": row.ref}
        for kind, row in sorted(latest.items())
    }
