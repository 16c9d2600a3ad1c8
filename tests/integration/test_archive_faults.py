"""The S3 archive under network faults, against a real S3 server (SeaweedFS on loopback).

SeaweedFS cannot throttle, reset or stall on demand, so a loopback proxy (tests/s3_proxy.py)
sits between the store's boto3 client and the server and does it for scripted requests. What
is stored is always checked on the real server, with a client that bypasses the proxy.
"""

from __future__ import annotations

import itertools
import time

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import func, select

from tasks.archive import ArchiveError, S3Store, sha256_hex
from tasks.pack import pack
from tasks.runtime import Runtime
from tasks.store.db import session_scope
from tasks.store.journal import PACKED, PENDING, VERIFIED
from tasks.store.models import Artifact, Order, Step
from tests.factories import add_catalog, add_order
from tests.fixtures_s3 import S3Server
from tests.s3_proxy import FaultProxy

ATTEMPTS = 3
PREFIX = "journeys"
KEY = "documents/2026/11/18/slip.html"
DATA = b"<p>packing slip</p>"
SLOWDOWN_MESSAGE = "SlowDown: Please reduce your request rate."


@pytest.fixture
def proxy(s3_server: S3Server):
    with FaultProxy(s3_server.endpoint_url) as running:
        yield running
    assert running.errors == []


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket("faults")


@pytest.fixture
def summary(figure):
    """One figure line per test (tests/conftest.py): the figures are the point of these tests."""
    return lambda line: figure(f"s3 faults: {line}")


def store_via(proxy: FaultProxy, bucket: str, **timeouts: float) -> S3Store:
    return S3Store(bucket, PREFIX, proxy.endpoint_url, max_attempts=ATTEMPTS, **timeouts)


def stored_keys(s3_server: S3Server, bucket: str) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")
    return [o["Key"] for o in listed.get("Contents", [])]


def assert_stored_once(s3_server: S3Server, bucket: str, ref: str, store: S3Store) -> None:
    assert ref == f"s3://{bucket}/{PREFIX}/{KEY}"
    assert stored_keys(s3_server, bucket) == [f"{PREFIX}/{KEY}"]
    head = s3_server.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{KEY}")
    assert head["Metadata"] == {"sha256": sha256_hex(DATA)}
    assert store.get(ref) == DATA


def test_transient_slowdown_is_retried_and_stored_once(proxy, s3_server, bucket, summary):
    proxy.script("PUT", ["slowdown", "slowdown"])
    store = store_via(proxy, bucket)
    ref = store.put(KEY, DATA, "text/html")
    assert proxy.log()[:3] == [("PUT", "slowdown", None)] * 2 + [("PUT", "forward", 200)]
    assert proxy.count("PUT") == 3 and proxy.count("PUT", "forward") == 1
    assert_stored_once(s3_server, bucket, ref, store)
    summary(
        f"503 SlowDown x2 → {proxy.count('PUT')} PUT attempts, 1 reached the server, stored once"
    )


def test_connection_reset_is_retried(proxy, s3_server, bucket, summary):
    proxy.script("PUT", ["reset"])
    store = store_via(proxy, bucket)
    ref = store.put(KEY, DATA, "text/html")
    assert proxy.log()[:2] == [("PUT", "reset", None), ("PUT", "forward", 200)]
    assert proxy.count("PUT") == 2
    assert_stored_once(s3_server, bucket, ref, store)
    summary(f"connection reset x1 → {proxy.count('PUT')} PUT attempts, stored once")


def test_read_timeout_is_retried_once_the_server_answers(proxy, s3_server, bucket, summary):
    proxy.script("PUT", ["stall"])
    store = store_via(proxy, bucket, read_timeout=1)
    started = time.monotonic()
    ref = store.put(KEY, DATA, "text/html")
    elapsed = time.monotonic() - started
    assert proxy.log()[:2] == [("PUT", "stall", None), ("PUT", "forward", 200)]
    assert 1 <= elapsed < 10  # waited out one read timeout, then succeeded
    assert_stored_once(s3_server, bucket, ref, store)
    summary(
        f"stall x1 (read timeout 1 s) → {proxy.count('PUT')} PUT attempts in {elapsed:.1f} s, "
        "stored once"
    )


def test_persistent_slowdown_is_a_one_line_archive_error(proxy, s3_server, bucket, summary):
    proxy.script("PUT", itertools.repeat("slowdown"))
    store = store_via(proxy, bucket)
    with pytest.raises(ArchiveError) as raised:
        store.put(KEY, DATA, "text/html")
    message = str(raised.value)
    assert message == (
        f"S3 put s3://{bucket}/{PREFIX}/{KEY} failed: {SLOWDOWN_MESSAGE} "
        f"(after {ATTEMPTS} attempts)"
    )
    assert proxy.count("PUT") == ATTEMPTS and proxy.count("PUT", "forward") == 0
    with pytest.raises(ClientError) as missing:
        s3_server.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{KEY}")
    assert missing.value.response["Error"]["Code"] == "404"
    assert stored_keys(s3_server, bucket) == []
    summary(
        f"503 SlowDown persistent → {proxy.count('PUT')} PUT attempts, nothing stored: {message}"
    )


def test_412_on_a_retry_with_our_content_is_success(proxy, s3_server, bucket, summary):
    """The first PUT is applied but its response is lost; the retry meets If-None-Match: 412."""
    proxy.script("PUT", ["lose_response"])
    store = store_via(proxy, bucket)
    ref = store.put(KEY, DATA, "text/html")
    assert proxy.log() == [
        ("PUT", "lose_response", 200),  # applied by the server, the client never heard
        ("PUT", "forward", 412),  # the retry: key exists → PreconditionFailed
        ("HEAD", "forward", 200),  # our SHA-256 is in the metadata → idempotent success
    ]
    assert_stored_once(s3_server, bucket, ref, store)
    summary(
        f"response lost x1 → {proxy.count('PUT')} PUT attempts (200 lost, 412), HEAD match, success"
    )


def test_pack_rolls_back_when_the_bundle_cannot_be_archived(
    engine, settings, cfg, proxy, s3_server, bucket, summary, now
):
    """No Artifact row and no state change may survive an archive failure; a rerun then packs."""
    with session_scope(engine) as session:
        add_catalog(session, now)
        order_id = add_order(
            session, now, lines=[("MUG-1", 1, "18.00")], state=VERIFIED, step="pack"
        ).id
    runtime = Runtime(settings=settings, config=cfg)
    runtime.archive = store_via(proxy, bucket)
    proxy.script("PUT", itertools.repeat("slowdown"))

    failure = rf"^S3 put s3://{bucket}/{PREFIX}/documents/.*\.zip failed: {SLOWDOWN_MESSAGE}"
    with pytest.raises(ArchiveError, match=failure), session_scope(engine) as session:
        pack(session, [order_id], now, runtime)

    with session_scope(engine) as session:
        order = session.get(Order, order_id)
        step = session.scalars(select(Step).where(Step.order_id == order_id)).one()
        assert (order.state, order.packing, step.status) == (VERIFIED, None, PENDING)
        assert session.scalar(select(func.count()).select_from(Artifact)) == 0
    assert stored_keys(s3_server, bucket) == []
    failed_attempts = proxy.count("PUT")
    assert failed_attempts == ATTEMPTS

    proxy.clear()  # the archive recovers: the same batch now packs
    with session_scope(engine) as session:
        assert pack(session, [order_id], now, runtime).advanced == 1
    with session_scope(engine) as session:
        assert session.get(Order, order_id).state == PACKED
        assert session.scalar(select(func.count()).select_from(Artifact)) == 2
    assert len(stored_keys(s3_server, bucket)) == 1
    summary(
        f"pack on {engine.dialect.name}: 503 persistent → ArchiveError after {failed_attempts} "
        "PUT attempts, rolled back (order verified, 0 artifacts, step pending); "
        "recovered → packed, 2 artifacts in 1 bundle"
    )
