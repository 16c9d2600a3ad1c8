"""The artifact store's file backend and the bundle format (no network)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from botocore.stub import ANY, Stubber

from tasks.archive import (
    ArchiveError,
    ArchiveIntegrityError,
    FileStore,
    S3Store,
    bundle_bytes,
    open_store,
    sha256_hex,
    split_member_ref,
)
from tasks.settings import Settings


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "artifacts")


def test_put_then_get_roundtrip_with_sidecar_checksum(store: FileStore, tmp_path: Path) -> None:
    ref = store.put("documents/a.html", b"<p>hello</p>")
    path = tmp_path / "artifacts" / "documents" / "a.html"
    assert ref == f"file://{path}"
    assert store.get(ref) == b"<p>hello</p>"
    assert Path(f"{path}.sha256").read_text() == sha256_hex(b"<p>hello</p>")


def test_same_key_same_content_is_an_idempotent_success(store: FileStore) -> None:
    first = store.put("k/one.bin", b"same")
    assert store.put("k/one.bin", b"same") == first
    assert store.get(first) == b"same"


def test_same_key_different_content_is_refused_and_original_kept(store: FileStore) -> None:
    ref = store.put("k/one.bin", b"original")
    with pytest.raises(ArchiveError, match="exists with different content"):
        store.put("k/one.bin", b"changed")
    assert store.get(ref) == b"original"


def test_no_temporary_files_left_behind(store: FileStore, tmp_path: Path) -> None:
    store.put("k/one.bin", b"x")
    store.put("k/one.bin", b"x")
    names = sorted(p.name for p in (tmp_path / "artifacts" / "k").iterdir())
    assert names == ["one.bin", "one.bin.sha256"]


def test_corrupted_file_is_detected_on_read(store: FileStore, tmp_path: Path) -> None:
    ref = store.put("k/one.bin", b"original")
    (tmp_path / "artifacts" / "k" / "one.bin").write_bytes(b"tampered")
    with pytest.raises(ArchiveIntegrityError):
        store.get(ref)


def test_missing_checksum_sidecar_is_an_integrity_error(store: FileStore, tmp_path: Path) -> None:
    ref = store.put("k/one.bin", b"original")
    (tmp_path / "artifacts" / "k" / "one.bin.sha256").unlink()
    with pytest.raises(ArchiveIntegrityError):
        store.get(ref)


def test_rerun_restores_a_missing_sidecar(store: FileStore, tmp_path: Path) -> None:
    ref = store.put("k/one.bin", b"original")
    (tmp_path / "artifacts" / "k" / "one.bin.sha256").unlink()
    store.put("k/one.bin", b"original")
    assert store.get(ref) == b"original"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", "a#b"])
def test_unsafe_keys_are_rejected(store: FileStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")


def test_refs_outside_the_store_are_refused(store: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"x")
    with pytest.raises(ArchiveError, match="not an object of the store"):
        store.get(f"file://{outside}")
    with pytest.raises(ArchiveError):
        store.get("s3://bucket/key")


def test_missing_object_is_an_archive_error(store: FileStore) -> None:
    with pytest.raises(ArchiveError, match="not found"):
        store.get(store.ref_for("nope.bin"))


def test_bundle_members_are_fetched_and_verified(store: FileStore) -> None:
    refs = store.put_bundle("b/pack.zip", {"o1/slip.html": b"slip", "o1/invoice.html": b"inv"})
    assert refs == {
        "o1/invoice.html": f"{store.ref_for('b/pack.zip')}#o1/invoice.html",
        "o1/slip.html": f"{store.ref_for('b/pack.zip')}#o1/slip.html",
    }
    assert store.get(refs["o1/slip.html"]) == b"slip"
    assert store.get(refs["o1/invoice.html"]) == b"inv"


def test_unknown_bundle_member_is_an_archive_error(store: FileStore) -> None:
    refs = store.put_bundle("b/pack.zip", {"a.txt": b"a"})
    with pytest.raises(ArchiveError, match="no such member"):
        store.get(refs["a.txt"].replace("a.txt", "b.txt"))


def test_bundle_bytes_are_deterministic_and_indexed() -> None:
    members = {"z.txt": b"zz", "a/b.txt": b"ab"}
    first = bundle_bytes(members)
    assert first == bundle_bytes(dict(reversed(list(members.items()))))
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert archive.namelist() == ["a/b.txt", "index.json", "z.txt"]
        assert json.loads(archive.read("index.json")) == {
            "a/b.txt": sha256_hex(b"ab"),
            "z.txt": sha256_hex(b"zz"),
        }
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}


def test_member_not_matching_the_index_is_detected(store: FileStore, tmp_path: Path) -> None:
    """A bundle whose object checksum is intact but whose index disagrees (a writer bug)."""
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("index.json", json.dumps({"a.txt": sha256_hex(b"other")}))
        archive.writestr("a.txt", b"a")
    ref = store.put("b/bad.zip", bad.getvalue())
    with pytest.raises(ArchiveIntegrityError, match="member checksum"):
        store.get(f"{ref}#a.txt")


def test_index_json_is_a_reserved_member_name(store: FileStore) -> None:
    with pytest.raises(ValueError):
        store.put_bundle("b/x.zip", {"index.json": b"{}"})


def test_split_member_ref() -> None:
    assert split_member_ref("s3://b/k.zip#o1/slip.html") == ("s3://b/k.zip", "o1/slip.html")
    assert split_member_ref("s3://b/k.zip") == ("s3://b/k.zip", None)


def test_open_store_chooses_the_backend_by_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(s3_endpoint_url="http://127.0.0.1:1", s3_sse="AES256")
    relative = open_store("file://./var/artifacts", settings)
    assert isinstance(relative, FileStore) and relative.root == tmp_path / "var" / "artifacts"
    s3 = open_store("s3://my-bucket/journeys/prod", settings)
    assert isinstance(s3, S3Store)
    assert s3.ref_for("a/b.zip") == "s3://my-bucket/journeys/prod/a/b.zip"
    assert s3.sse == "AES256"
    assert s3.client.meta.endpoint_url == "http://127.0.0.1:1"
    with pytest.raises(ArchiveError, match="unsupported archive URL"):
        open_store("ftp://x", settings)


def test_s3_put_sends_condition_checksum_and_sse(monkeypatch) -> None:
    """The request shape, checked with botocore's Stubber (the S3 behaviour is tested live)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    s3 = S3Store("my-bucket", "pre", "http://127.0.0.1:1", sse="aws:kms")
    expected = {
        "Bucket": "my-bucket",
        "Key": "pre/a.bin",
        "Body": ANY,
        "ContentType": "text/plain",
        "Metadata": {"sha256": sha256_hex(b"x")},
        "IfNoneMatch": "*",
        "ServerSideEncryption": "aws:kms",
    }
    with Stubber(s3.client) as stub:
        stub.add_response("put_object", {}, expected)
        assert s3.put("a.bin", b"x", "text/plain") == "s3://my-bucket/pre/a.bin"
        stub.assert_no_pending_responses()
