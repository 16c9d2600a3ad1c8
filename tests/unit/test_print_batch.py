"""The print step: PDFs beside the archived documents, one print batch of a sweep's packing slips
(idempotent, crash-safe), links (S3 presigned, real SeaweedFS) and the two CLI commands."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

import tasks.print_batch as print_batch
from flows.journey import print_batch_markdown
from tasks.archive import S3Store
from tasks.pack import pack
from tasks.print_batch import document_link, print_all, print_pending
from tasks.store.db import session_factory
from tasks.store.models import Artifact, Customer, Order
from tests.conftest import ROOT
from tests.unit.test_pack import CountingStore, _line, _order, seed


def page_count(pdf: bytes) -> int:
    """Pages in a PDF WeasyPrint wrote (its object streams are deflated)."""
    text = b"".join(_inflated(m.group(1)) for m in
                    re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S))
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", text))


def _inflated(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return b""


def kinds(make_session) -> dict[str, int]:
    with make_session() as session:
        rows = session.scalars(select(Artifact.kind)).all()
    return {kind: rows.count(kind) for kind in sorted(set(rows))}


def use_documents(runtime, **settings) -> None:
    documents = runtime.config.packing.documents.model_copy(update=settings)
    packing = runtime.config.packing.model_copy(update={"documents": documents})
    runtime.config = runtime.config.model_copy(update={"packing": packing})


@pytest.fixture
def packed(sqlite_engine, runtime, tmp_path, now):
    """Three orders packed; the third then cancelled (its slip must not be printed). PDFs on
    (configs/ ships them off: they cost ~0.1 s of CPU each)."""
    runtime.archive = CountingStore(tmp_path / "artifacts")
    use_documents(runtime, pdf=True)
    make_session = session_factory(sqlite_engine)
    with make_session() as session, session.begin():
        ids = seed(session)
        third = _order("1003", Customer(email="c@example.com", created_at=now, updated_at=now),
                       [_line(1, "VASE-GLASS", "Glass vase", 1, "45.00")], subtotal="45.00",
                       discounts="0", tax="0", total="57.00")
        session.add(third)
        session.flush()
        ids.append(third.id)
    with make_session() as session, session.begin():
        pack(session, ids, now, runtime)
        session.execute(update(Order).where(Order.id == ids[2]).values(state="cancelled"))
    return make_session, ids


def test_the_print_step_makes_pdfs_and_one_batch_of_the_slips_once(packed, sqlite_engine,
                                                                      runtime, now):
    make_session, ids = packed
    writes = runtime.archive.writes
    printed = print_pending(sqlite_engine, now, runtime)
    assert (printed.pdfs, printed.slips, runtime.archive.writes - writes) == (6, 2, 2)
    assert printed.seconds > 0 and printed.as_dict()["seconds_per_document"] > 0
    assert kinds(make_session) == {"invoice": 3, "invoice_pdf": 3, "packing_slip": 3,
                                   "packing_slip_pdf": 3, "print_batch": 2}
    batch = runtime.archive.get(printed.batch_ref)
    assert batch.startswith(b"%PDF-") and page_count(batch) == 2  # the cancelled one left out
    assert re.fullmatch(r"file://.*/documents/2026/11/18/print-batch-[0-9a-f]{16}\.pdf",
                        printed.batch_ref)
    assert Path(document_link(runtime.archive, printed.batch_ref)).read_bytes() == batch
    with make_session() as session:
        rows = session.scalars(select(Artifact).where(Artifact.kind.like("%_pdf"))).all()
        in_batch = session.scalars(select(Artifact.order_id).where(
            Artifact.kind == "print_batch").order_by(Artifact.id)).all()
    assert in_batch == ids[:2]  # in packing order
    for row in rows:  # beside the HTML, verified like any bundle member
        pdf = runtime.archive.get(row.ref)
        assert pdf.startswith(b"%PDF-") and row.ref.endswith(".pdf") and row.size == len(pdf)
    again = print_pending(sqlite_engine, now, runtime)
    assert (again.pdfs, again.batch_ref, runtime.archive.writes - writes) == (0, None, 2)


def test_a_crash_before_recording_makes_the_same_batch_again(packed, sqlite_engine, runtime,
                                                             now, monkeypatch):
    make_session, _ = packed
    use_documents(runtime, batch_size=2)  # the first order's slip and invoice
    real_insert = print_batch.insert_ignoring_duplicates

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the archive and the commit")

    monkeypatch.setattr(print_batch, "insert_ignoring_duplicates", crash)
    with pytest.raises(RuntimeError):
        print_pending(sqlite_engine, now, runtime)
    assert kinds(make_session).get("print_batch") is None
    monkeypatch.setattr(print_batch, "insert_ignoring_duplicates", real_insert)
    printed = print_pending(sqlite_engine, now, runtime)
    root = Path(runtime.archive.root)
    assert [p.name for p in root.rglob("print-batch-*.pdf")] == [
        printed.batch_ref.rsplit("/", 1)[1]]  # the same object: no second, different batch
    assert len(list(root.rglob("pdf-*.zip"))) == 1
    assert (printed.pdfs, kinds(make_session)["print_batch"]) == (2, 1)  # the rest: next time


def test_a_sweep_prints_everything_pending_one_batch_per_batch_size(packed, sqlite_engine,
                                                                   runtime, now):
    make_session, _ = packed
    use_documents(runtime, batch_size=4)
    printed = print_all(sqlite_engine, now, runtime)
    assert [(p.pdfs, p.slips) for p in printed] == [(4, 2), (2, 0)]  # 2nd: the cancelled one's
    assert print_all(sqlite_engine, now, runtime) == []  # a rerun finds nothing left
    use_documents(runtime, pdf=False)
    with make_session() as session, session.begin():
        session.execute(delete(Artifact).where(Artifact.kind.like("%_pdf")))
    assert print_all(sqlite_engine, now, runtime) == []  # off: nothing rendered


def test_a_print_batch_link_on_s3_is_presigned_and_opens_the_pdf(s3_server):
    store = S3Store(s3_server.create_bucket(), "journeys", s3_server.endpoint_url)
    ref = store.put("documents/2026/11/18/print-batch-0123456789abcdef.pdf", b"%PDF-1.7 x",
                    "application/pdf")
    link = document_link(store, ref, seconds=300)
    assert "X-Amz-Signature=" in link and "X-Amz-Expires=300" in link
    answer = httpx.get(link)
    assert (answer.status_code, answer.content) == (200, b"%PDF-1.7 x")


def test_the_sweep_summary_links_the_print_batch():
    presigned = {"slips": 12, "link": "https://bucket.s3.amazonaws.com/b.pdf?X-Amz-Signature=x"}
    local = {"slips": 3, "link": "/srv/archive/documents/b.pdf"}
    assert print_batch_markdown({"batches": [presigned, local]})[-2:] == [
        "- 12 packing slips in packing order, one PDF: "
        "[Open the PDF](https://bucket.s3.amazonaws.com/b.pdf?X-Amz-Signature=x)",
        "- 3 packing slips in packing order, one PDF: `/srv/archive/documents/b.pdf`"]
    assert print_batch_markdown({}) == [] == print_batch_markdown({"pdfs": 0, "batches": []})
    assert "next sweep retries" in print_batch_markdown({"failed": "S3 put failed"})[-1]


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli(packed, sqlite_engine, tmp_path, monkeypatch):
    """`journeys ARGS` in this process, on the packed store (one order's PDFs not made yet)."""
    from flows import common
    from flows.cli import app
    from tasks.settings import get_settings

    monkeypatch.setenv("JOURNEYS_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("JOURNEYS_ARTIFACTS_URL", f"file://{tmp_path / 'artifacts'}")
    monkeypatch.setenv("JOURNEYS_SECRET_KEY", "test-secret")
    monkeypatch.setenv("JOURNEYS_CONFIG_DIR", str(ROOT / "configs"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for cached in (get_settings, common.runtime, common.app_engine):
        cached.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, list(args))
    for cached in (get_settings, common.runtime, common.app_engine):
        cached.cache_clear()


def test_journeys_documents_writes_openable_html_and_pdf(cli, tmp_path, monkeypatch):
    from flows.cli import documents

    opened: list[str] = []
    monkeypatch.setattr(documents, "has_display", lambda: True)
    monkeypatch.setattr(documents.webbrowser, "open", lambda uri: opened.append(uri) or True)
    result = cli("documents", "#1001", "--out", str(tmp_path / "out"), "--open")
    assert result.exit_code == 0, result.output
    [folder] = (tmp_path / "out").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "invoice.html", "invoice.pdf", "packing_slip.html", "packing_slip.pdf"]
    assert (folder / "invoice.pdf").read_bytes().startswith(b"%PDF-")
    assert "Invoice INV-2026-000001" in (folder / "invoice.html").read_text()
    assert opened == [(folder / "packing_slip.pdf").resolve().as_uri(),
                      (folder / "invoice.pdf").resolve().as_uri()]
    monkeypatch.setattr(documents, "has_display", lambda: False)
    headless = cli("documents", "#1001", "--out", str(tmp_path / "out"), "--open")
    assert headless.exit_code == 0 and "No display here" in headless.output
    missing = cli("documents", "#9999")
    assert missing.exit_code == 2 and "no order with id or name '#9999'" in missing.stderr


def test_journeys_print_batch_prints_a_days_slips_in_one_pdf(cli, tmp_path):
    out = tmp_path / "slips.pdf"
    result = cli("print-batch", "--date", "2026-11-18", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "2 packing slips of 2026-11-18" in result.output  # the cancelled order's left out
    assert page_count(out.read_bytes()) == 2
    quiet = cli("print-batch", "--date", "2026-11-19", "--out", str(out))
    assert quiet.exit_code == 0 and "No packing slips on 2026-11-19" in quiet.output
    wrong = cli("print-batch", "--date", "18.11.2026")
    assert wrong.exit_code == 2 and "is not a date" in wrong.stderr


def test_the_sweeps_print_step_links_its_batch_in_the_summary(cli, tmp_path, monkeypatch, now):
    """flows/journey.py's print task, as the sweep runs it, with PDFs turned on in configs."""
    import shutil

    from flows import common, journey
    from tasks.settings import get_settings

    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    packing = configs / "packing.yaml"
    packing.write_text(packing.read_text().replace("  pdf: false\n", "  pdf: true\n"))
    monkeypatch.setenv("JOURNEYS_CONFIG_DIR", str(configs))
    for cached in (get_settings, common.runtime, common.app_engine):
        cached.cache_clear()
    printed = journey.print_documents.fn(now, (0, 1))
    [batch] = printed["batches"]
    assert (printed["pdfs"], batch["slips"]) == (6, 2) and Path(batch["link"]).is_file()
    summary = journey.summary_markdown(now, {"stages": {}, "messages": {}, "print": printed})
    assert f"- 2 packing slips in packing order, one PDF: `{batch['link']}`" in summary
    assert journey.print_documents.fn(now, (0, 1)) == {"pdfs": 0, "batches": []}  # rerun


def test_erasing_a_customer_deletes_the_print_batch_holding_their_slip(packed, sqlite_engine,
                                                                      runtime, now):
    from tasks.privacy import erase_customer

    make_session, ids = packed
    printed = print_pending(sqlite_engine, now, runtime)
    batch = Path(printed.batch_ref.removeprefix("file://"))
    assert batch.exists()
    with make_session() as session:
        erase_customer(session, "sam@example.com", now, runtime, "test")
    assert not batch.exists()  # it held Sam's packing slip (and the other order's)
    assert "print_batch" not in kinds(make_session)
    with make_session() as session:  # Sam's own PDFs: bundle members, redacted in place
        [pdf] = session.scalars(select(Artifact.ref).where(
            Artifact.order_id == ids[0], Artifact.kind == "packing_slip_pdf")).all()
    assert runtime.archive.get(pdf).startswith(b"Erased at the customer's request")
