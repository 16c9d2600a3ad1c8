"""The S3 backend against a real S3-compatible server (SeaweedFS on loopback)."""

from __future__ import annotations

import socket

import pytest

from tasks.archive import ArchiveError, ArchiveIntegrityError, S3Store, open_store, sha256_hex
from tasks.settings import Settings
from tests.fixtures_s3 import S3Server


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket()


@pytest.fixture
def store(s3_server: S3Server, bucket: str) -> S3Store:
    settings = Settings(s3_endpoint_url=s3_server.endpoint_url)
    opened = open_store(f"s3://{bucket}/archive", settings)
    assert isinstance(opened, S3Store)
    return opened


def test_put_get_roundtrip_stores_our_sha256(
    store: S3Store,
    s3_server: S3Server,
    bucket: str,
) -> None:
    ref = store.put("docs/a.html", b"<p>hi</p>", "text/html")
    assert ref == f"s3://{bucket}/archive/docs/a.html"
    assert store.get(ref) == b"<p>hi</p>"
    head = s3_server.client().head_object(Bucket=bucket, Key="archive/docs/a.html")
    assert head["Metadata"] == {"sha256": sha256_hex(b"<p>hi</p>")}
    assert head["ContentType"] == "text/html"


def test_second_put_of_same_content_is_success(store: S3Store) -> None:
    first = store.put("docs/a.html", b"same")
    assert store.put("docs/a.html", b"same") == first
    assert store.get(first) == b"same"


def test_different_content_for_existing_key_is_refused(store: S3Store) -> None:
    ref = store.put("docs/a.html", b"original")
    with pytest.raises(ArchiveError, match="exists with different content"):
        store.put("docs/a.html", b"changed")
    assert store.get(ref) == b"original"


def test_corrupted_object_is_detected_on_read(
    store: S3Store,
    s3_server: S3Server,
    bucket: str,
) -> None:
    ref = store.put("docs/a.html", b"original")
    s3_server.client().put_object(  # unconditional overwrite, keeping the old checksum
        Bucket=bucket,
        Key="archive/docs/a.html",
        Body=b"tampered",
        Metadata={"sha256": sha256_hex(b"original")},
    )
    with pytest.raises(ArchiveIntegrityError):
        store.get(ref)


def test_object_without_recorded_checksum_is_not_trusted(
    store: S3Store,
    s3_server: S3Server,
    bucket: str,
) -> None:
    s3_server.client().put_object(Bucket=bucket, Key="archive/foreign.bin", Body=b"x")
    with pytest.raises(ArchiveIntegrityError):
        store.get(f"s3://{bucket}/archive/foreign.bin")


def test_bundle_is_one_object_and_members_are_fetchable(
    store: S3Store,
    s3_server: S3Server,
    bucket: str,
) -> None:
    members = {"1-A/packing_slip.html": b"slip", "1-A/invoice.html": b"invoice"}
    refs = store.put_bundle("documents/pack-1.zip", members)
    assert store.put_bundle("documents/pack-1.zip", members) == refs  # idempotent rerun
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="archive/")
    assert [o["Key"] for o in listed["Contents"]] == ["archive/documents/pack-1.zip"]
    assert store.get(refs["1-A/packing_slip.html"]) == b"slip"
    assert store.get(refs["1-A/invoice.html"]) == b"invoice"


def test_missing_object_is_a_one_line_archive_error(store: S3Store, bucket: str) -> None:
    with pytest.raises(ArchiveError, match=r"^S3 get .* failed: NoSuchKey") as raised:
        store.get(f"s3://{bucket}/archive/missing.bin")
    assert "\n" not in str(raised.value)


def test_sse_s3_is_applied_and_reads_back(
    s3_server: S3Server,
    bucket: str,
) -> None:
    """The fixture starts SeaweedFS with an SSE-S3 key, so AES256 is honoured, not ignored."""
    settings = Settings(s3_endpoint_url=s3_server.endpoint_url, s3_sse="AES256")
    store = open_store(f"s3://{bucket}/sse", settings)
    ref = store.put("a.bin", b"secret")
    assert store.get(ref) == b"secret"
    head = s3_server.client().head_object(Bucket=bucket, Key="sse/a.bin")
    assert head["ServerSideEncryption"] == "AES256"


def test_unreachable_endpoint_fails_after_retries_with_archive_error(
    s3_server: S3Server,  # provides the AWS test credentials
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3Store("journeys", "", f"http://127.0.0.1:{port}", max_attempts=2)
    with pytest.raises(ArchiveError, match=r"^S3 put s3://journeys/a.bin failed: Could not"):
        store.put("a.bin", b"x")
