"""The print step: PDFs of the archived documents, and one print batch of packing slips.

After a sweep's stages (flows/journey.py), for the orders of its shard, outside any database
transaction: every packing slip, invoice and credit note archived in the last PENDING_DAYS that
has no PDF yet is rendered to PDF (WeasyPrint, tasks/documents.py), and the packing slips among
them, in packing order, become ONE print batch PDF: the packer prints a sweep's slips in one go.

- The PDFs go to the archive as one bundle beside the HTML bundles (members named after their
  HTML, artifact kinds `packing_slip_pdf`, `invoice_pdf`, `credit_note_pdf`; effect key: the
  HTML's + ":pdf"), so erasure rewrites them like any bundle member.
- The print batch is a plain object, documents/YYYY/MM/DD/print-batch-<digest>.pdf, so a link
  opens it: a presigned URL on S3 (`document_link`), a path on a file archive; one artifact row
  `print_batch` per slip in it (effect key: the slip's + ":print"). A slip is in one batch.

Idempotent: what is pending is what has no PDF row yet. A rerun after a crash finds the same
documents and renders the same bytes, so the same content-addressed keys; rows are inserted
ignoring duplicates. An object a crash left unrecorded is an orphan for the archive reconcile.
Documents of orders cancelled since are made PDFs but left out of the batch.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
from botocore.config import Config as BotoConfig
from sqlalchemy import Engine, exists, select
from sqlalchemy.orm import Session, aliased

from tasks.archive import ArtifactStore, S3Store, bundle_members, split_member_ref
from tasks.documents import combined_pdf, pdf_pages
from tasks.runtime import Runtime
from tasks.states import OrderState
from tasks.store.db import session_scope
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import Artifact, Order

PDF_KINDS = ("packing_slip", "invoice", "credit_note")
SLIP = "packing_slip"
BATCH_KIND = "print_batch"
PENDING_DAYS = 7  # older documents get their PDF on demand (`journeys documents ORDER`)
LINK_SECONDS = 7 * 24 * 3600  # a presigned URL's life: S3's longest (SigV4)
PDF_TYPE = "application/pdf"


@dataclass(frozen=True)
class Pending:
    """An archived document without its PDF."""

    effect_key: str
    kind: str
    ref: str
    sha256: str
    order_id: int
    order_state: str


@dataclass
class Printed:
    """What one print step made; `seconds` is PDF rendering alone (per document: its cost)."""

    pdfs: int = 0
    slips: int = 0
    batch_ref: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        per_document = self.seconds / self.pdfs if self.pdfs else 0.0
        return {"pdfs": self.pdfs, "slips": self.slips, "batch_ref": self.batch_ref,
                "render_seconds": round(self.seconds, 3),
                "seconds_per_document": round(per_document, 3)}


def print_all(engine: Engine, now: datetime, rt: Runtime,
              shard: tuple[int, int] = (0, 1)) -> list[Printed]:
    """Every pending document, `batch_size` at a time (one print batch each), so a rerun
    finds nothing left; nothing when PDFs are off (configs/packing.yaml documents.pdf)."""
    size = rt.config.packing.documents.batch_size
    printed = [print_pending(engine, now, rt, shard)]
    while printed[-1].pdfs == size:
        printed.append(print_pending(engine, now, rt, shard))
    return [p for p in printed if p.pdfs]


def print_pending(engine: Engine, now: datetime, rt: Runtime,
                  shard: tuple[int, int] = (0, 1)) -> Printed:
    """PDFs of up to `batch_size` of the shard's pending documents and the print batch of the
    slips among them (see above)."""
    settings = rt.config.packing.documents
    if not settings.pdf:
        return Printed()
    with session_scope(engine) as session:
        pending = pending_documents(session, now, shard, settings.batch_size)
    if not pending:
        return Printed()
    html = read_documents(rt.archive, [p.ref for p in pending])
    started = time.perf_counter()  # a duration for the report, not the business clock
    rendered = {p.effect_key: pdf_pages(html[p.ref]) for p in pending}
    pdfs = {p.effect_key: rendered[p.effect_key].write_pdf() for p in pending}
    slips = [p for p in pending if p.kind == SLIP and p.order_state != OrderState.CANCELLED]
    batch = (combined_pdf([rendered[p.effect_key] for p in slips])
             if settings.print_batch and slips else None)
    printed = Printed(pdfs=len(pdfs), slips=len(slips) if batch else 0,
                      seconds=time.perf_counter() - started)
    rows = archive_pdfs(rt.archive, pending, pdfs, now)
    if batch is not None:
        printed.batch_ref = rt.archive.put(batch_key(batch, now), batch, PDF_TYPE)
        rows += batch_rows(slips, printed.batch_ref, batch, now)
    with session_scope(engine) as session:
        insert_ignoring_duplicates(session, Artifact, rows, ["effect_key"])
    return printed


def pending_documents(session: Session, now: datetime, shard: tuple[int, int],
                      limit: int) -> list[Pending]:
    """Documents of the last PENDING_DAYS without a PDF, in the order they were archived."""
    pdf = aliased(Artifact)
    has_pdf = exists().where(pdf.effect_key == Artifact.effect_key.concat(":pdf"))
    query = (
        select(Artifact.effect_key, Artifact.kind, Artifact.ref, Artifact.sha256, Order.id,
               Order.state)
        .join(Order, Order.id == Artifact.order_id)
        .where(Artifact.kind.in_(PDF_KINDS),
               Artifact.created_at >= now - timedelta(days=PENDING_DAYS), ~has_pdf)
        .order_by(Artifact.id)
        .limit(limit)
    )
    index, count = shard
    if count > 1:
        query = query.where(Artifact.order_id % count == index)
    return [Pending(*row) for row in session.execute(query).tuples()]


def read_documents(archive: ArtifactStore, refs: Sequence[str]) -> dict[str, bytes]:
    """ref → bytes, each bundle fetched (and verified) once however many members are wanted."""
    wanted: dict[str, list[str]] = defaultdict(list)
    for ref in refs:
        object_ref, member = split_member_ref(ref)
        wanted[object_ref].append(member or "")
    found: dict[str, bytes] = {}
    for object_ref, members in wanted.items():
        data = archive.get(object_ref)
        if members == [""]:
            found[object_ref] = data
            continue
        inside = bundle_members(data, object_ref)
        found |= {f"{object_ref}#{m}": inside[m] for m in members}
    return found


def pdf_member(document: Pending) -> str:
    """Beside its HTML, named after it and its content (a changed order's new papers differ)."""
    member = split_member_ref(document.ref)[1] or document.ref.rsplit("/", 1)[-1]
    stem = member.removesuffix(".html")
    return f"{stem}.{document.sha256[:12]}.pdf"


def archive_pdfs(archive: ArtifactStore, pending: Sequence[Pending], pdfs: dict[str, bytes],
                 now: datetime) -> list[dict[str, Any]]:
    """One bundle of every PDF; the artifact rows to record."""
    members = {pdf_member(p): pdfs[p.effect_key] for p in pending}
    refs = archive.put_bundle(bundle_key(members, now), members)
    return [{"effect_key": f"{p.effect_key}:pdf", "order_id": p.order_id, "kind": f"{p.kind}_pdf",
             "ref": refs[pdf_member(p)], "sha256": _sha256(pdfs[p.effect_key]),
             "size": len(pdfs[p.effect_key]), "created_at": now} for p in pending]


def batch_rows(slips: Sequence[Pending], ref: str, batch: bytes, now: datetime
               ) -> list[dict[str, Any]]:
    digest = _sha256(batch)
    return [{"effect_key": f"{p.effect_key}:print", "order_id": p.order_id, "kind": BATCH_KIND,
             "ref": ref, "sha256": digest, "size": len(batch), "created_at": now} for p in slips]


def bundle_key(members: dict[str, bytes], now: datetime) -> str:
    """Content-addressed: the same PDFs give the same key, so a rerun rewrites nothing."""
    fingerprint = "\n".join(f"{name}:{_sha256(data)}" for name, data in sorted(members.items()))
    return f"documents/{now:%Y/%m/%d}/pdf-{_sha256(fingerprint.encode())[:16]}.zip"


def batch_key(batch: bytes, now: datetime) -> str:
    return f"documents/{now:%Y/%m/%d}/print-batch-{_sha256(batch)[:16]}.pdf"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- links and the day's slips (the CLI) ---------------------------------------------------------


def document_link(archive: ArtifactStore, ref: str, seconds: int = LINK_SECONDS) -> str:
    """What opens an archived object: a presigned HTTPS URL on S3, the file's path on a file
    archive. (A bundle member's link opens its bundle: print batches are plain objects.)"""
    object_ref = split_member_ref(ref)[0]
    if isinstance(archive, S3Store):
        key = object_ref.removeprefix(f"s3://{archive.bucket}/")
        return str(_signing_client(archive).generate_presigned_url(
            "get_object", Params={"Bucket": archive.bucket, "Key": key}, ExpiresIn=seconds))
    return object_ref.removeprefix("file://")


def _signing_client(archive: S3Store) -> Any:
    """The archive's client, signing with SigV4 (botocore presigns with SigV2 by default,
    which AWS no longer accepts for new buckets nor for SSE-KMS objects)."""
    meta = archive.client.meta
    config = meta.config.merge(BotoConfig(signature_version="s3v4"))
    return boto3.client("s3", endpoint_url=meta.endpoint_url, region_name=meta.region_name,
                        config=config)


def day_slips(session: Session, day: date, timezone: str) -> list[str]:
    """The packing slips archived on `day` in the store's time zone, in packing order, of
    orders not cancelled since: what a packer prints for that day."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, datetime.min.time(), zone)
    query = (select(Artifact.ref).join(Order, Order.id == Artifact.order_id)
             .where(Artifact.kind == SLIP, Artifact.created_at >= start,
                    Artifact.created_at < start + timedelta(days=1),
                    Order.state != OrderState.CANCELLED)
             .order_by(Artifact.id))
    return list(session.scalars(query))


def slips_pdf(archive: ArtifactStore, refs: Sequence[str]) -> bytes:
    """One PDF of the slips behind `refs`, in that order."""
    html = read_documents(archive, refs)
    return combined_pdf([pdf_pages(html[ref]) for ref in refs])


def export_order_documents(session: Session, archive: ArtifactStore, order: Order,
                           folder: Path) -> list[dict[str, Any]]:
    """The order's documents written out of the archive into `folder` (HTML, and its PDF: the
    archived one, else rendered here and not archived), so a browser opens them. One entry
    per document: kind, files written, the archived refs and what opens them."""
    rows = list(session.scalars(select(Artifact).where(Artifact.order_id == order.id)
                                .order_by(Artifact.id)))
    pdf_of = {row.effect_key.removesuffix(":pdf"): row for row in rows
              if row.kind.endswith("_pdf")}
    latest = {_file_stem(row): row for row in rows if row.kind in PDF_KINDS}  # last version
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for stem, row in latest.items():
        html = archive.get(row.ref)
        pdf_row = pdf_of.get(row.effect_key)
        pdf = archive.get(pdf_row.ref) if pdf_row else pdf_pages(html).write_pdf()
        (folder / f"{stem}.html").write_bytes(html)
        (folder / f"{stem}.pdf").write_bytes(pdf)
        entries.append({"kind": row.kind, "html": str(folder / f"{stem}.html"),
                        "pdf": str(folder / f"{stem}.pdf"), "ref": row.ref,
                        "pdf_ref": pdf_row.ref if pdf_row else None})
    for ref in dict.fromkeys(row.ref for row in rows if row.kind == BATCH_KIND):
        entries.append({"kind": BATCH_KIND, "html": None, "pdf": None, "ref": ref,
                        "pdf_ref": ref, "link": document_link(archive, ref)})
    return entries


def _file_stem(row: Artifact) -> str:
    """packing_slip, invoice, credit_note-CN-2026-000001: the archived member's own name."""
    member = split_member_ref(row.ref)[1] or row.kind
    return member.rsplit("/", 1)[-1].removesuffix(".html")
