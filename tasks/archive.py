"""Artifact store: one interface over a local folder (file://) and S3 (s3://).

Keys are deterministic (the caller's job), content is verified with a SHA-256 we compute
ourselves, and writes are conditional: an object is never overwritten. Writing the same content
to the same key again is an idempotent success; different content for an existing key is an
error. Per-order documents are archived as one zip bundle per stage and batch, with an
`index.json` of member checksums; a member ref is `<bundle ref>#<member name>`. Only erasure
deletes (tasks/privacy.py: a bundle holding an erased customer is rewritten, then removed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tasks.faults import fault_point
from tasks.settings import Settings

INDEX_MEMBER = "index.json"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same members, same bundle bytes
ZIP_CONTENT_TYPE = "application/zip"


class ArchiveError(Exception):
    """An archive operation failed (after retries); the message says which object and why."""


class ArchiveIntegrityError(ArchiveError):
    """Stored content does not match the SHA-256 recorded when it was written."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_key(key: str) -> None:
    """Keys are relative slash-separated paths without '..', empty parts or '#'."""
    parts = key.split("/")
    if not key or key.startswith("/") or "#" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid archive key: {key!r}")


def bundle_bytes(members: dict[str, bytes]) -> bytes:
    """A deterministic zip: sorted members, fixed timestamps, plus index.json {member: sha256}."""
    index = {name: sha256_hex(data) for name, data in sorted(members.items())}
    entries = {INDEX_MEMBER: json.dumps(index, indent=2, sort_keys=True).encode(), **members}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever platform wrote it
            info.external_attr = 0o644 << 16
            bundle.writestr(info, entries[name])
    return buffer.getvalue()


def bundle_member(bundle: bytes, member: str, ref: str) -> bytes:
    """One member of a bundle, checked against the bundle's index."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        index = json.loads(archive.read(INDEX_MEMBER))
        if member not in index:
            raise ArchiveError(f"{ref}: no such member in bundle")
        data = archive.read(member)
    if sha256_hex(data) != index[member]:
        raise ArchiveIntegrityError(f"{ref}: member checksum does not match the bundle index")
    return data


def bundle_members(bundle: bytes, ref: str) -> dict[str, bytes]:
    """Every member of a bundle (index.json aside), each checked against the bundle's index."""
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            index = json.loads(archive.read(INDEX_MEMBER))
            members = {name: archive.read(name) for name in index}
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ArchiveError(f"{ref}: not a readable bundle ({exc})") from exc
    for name, data in members.items():
        if sha256_hex(data) != index[name]:
            raise ArchiveIntegrityError(f"{ref}#{name}: member checksum does not match the index")
    return members


def split_member_ref(ref: str) -> tuple[str, str | None]:
    """'<bundle ref>#<member>' → (bundle ref, member); a plain ref → (ref, None)."""
    object_ref, hash_sign, member = ref.rpartition("#")
    return (object_ref, member) if hash_sign else (ref, None)


def _check_member_name(name: str) -> None:
    check_key(name)
    if name == INDEX_MEMBER:
        raise ValueError(f"{INDEX_MEMBER} is reserved in bundles")


@dataclass(frozen=True)
class StoredObject:
    ref: str
    written_at: datetime  # when the store wrote it (its clock, not the business clock)


class ArtifactStore(ABC):
    """put/get with our own SHA-256, never overwriting; bundles of many small documents."""

    puts: int = 0  # objects this process asked the store to write (the bench reports it)

    @abstractmethod
    def ref_for(self, key: str) -> str:
        """The ref an object written under `key` gets."""

    @abstractmethod
    def key_of(self, ref: str) -> str:
        """The key an object ref was written under (the inverse of `ref_for`)."""

    @abstractmethod
    def delete(self, ref: str) -> None:
        """Remove an object; an absent one is no error. Erasure is the only caller."""

    @abstractmethod
    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under `prefix` (a key prefix such as 'documents/'), with its write time."""

    @abstractmethod
    def _write(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        """Write if absent; same checksum present is success, a different one ArchiveError."""

    @abstractmethod
    def _read(self, ref: str) -> tuple[bytes, str | None]:
        """The object's bytes and the SHA-256 recorded with it (None if none was)."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        check_key(key)
        self.puts += 1
        self._write(key, data, sha256_hex(data), content_type)
        fault_point("archive:after_put")
        return self.ref_for(key)

    def get(self, ref: str) -> bytes:
        """The object (or bundle member, for `bundle#member` refs), verified against its SHA-256."""
        object_ref, member = split_member_ref(ref)
        data, recorded = self._read(object_ref)
        if recorded is None or sha256_hex(data) != recorded:
            raise ArchiveIntegrityError(f"{object_ref}: content does not match its SHA-256")
        return bundle_member(data, member, ref) if member else data

    def put_bundle(self, key: str, members: dict[str, bytes]) -> dict[str, str]:
        """Write all members as ONE zip object; returns {member: '<bundle ref>#<member>'}."""
        for name in members:
            _check_member_name(name)
        ref = self.put(key, bundle_bytes(members), ZIP_CONTENT_TYPE)
        return {name: f"{ref}#{name}" for name in sorted(members)}


class FileStore(ArtifactStore):
    """A local folder; each object has a `.sha256` sidecar. Writes are link-if-absent."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def ref_for(self, key: str) -> str:
        return f"file://{self.root / key}"

    def _write(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        if not _link_new_file(path, data):
            existing = sha256_hex(path.read_bytes())
            if existing != sha256:
                raise ArchiveError(f"{self.ref_for(key)}: exists with different content")
        _link_new_file(_sidecar(path), sha256.encode())  # kept if a crash left it missing

    def key_of(self, ref: str) -> str:
        return self._path_of(ref).relative_to(self.root).as_posix()

    def delete(self, ref: str) -> None:
        """The object first: a sidecar left by a crash is harmless, and a rerun removes it."""
        path = self._path_of(ref)
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Objects, and what a crash mid-write leaves: `.tmp-*` files, sidecars alone."""
        folder = self.root / prefix
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and not _is_sidecar_of_an_object(path):
                mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                yield StoredObject(self.ref_for(path.relative_to(self.root).as_posix()), mtime)

    def _read(self, ref: str) -> tuple[bytes, str | None]:
        path = self._path_of(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ArchiveError(f"{ref}: not found") from exc
        sidecar = _sidecar(path)
        return data, sidecar.read_text().strip() if sidecar.exists() else None

    def _path_of(self, ref: str) -> Path:
        path = Path(ref.removeprefix("file://")).resolve()
        if not (ref.startswith("file://") and path.is_relative_to(self.root)):
            raise ArchiveError(f"{ref}: not an object of the store at {self.root}")
        return path


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _is_sidecar_of_an_object(path: Path) -> bool:
    return path.name.endswith(".sha256") and path.with_name(path.name[:-7]).exists()


def _link_new_file(path: Path, data: bytes) -> bool:
    """Write `data` to a temp file and hard-link it into place; False if `path` already exists."""
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    try:
        os.link(tmp.name, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp.name)


class S3Store(ArtifactStore):
    """An S3 bucket and prefix; conditional PUT (If-None-Match: *), SHA-256 in object metadata."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str | None = None,
        sse: str | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 5,
        read_timeout: float = 30,
    ) -> None:
        """`max_attempts` counts every attempt, the first included; timeouts are in seconds."""
        self.bucket, self.prefix, self.sse = bucket, prefix.strip("/"), sse
        self.client = _s3_client(endpoint_url, max_attempts, connect_timeout, read_timeout)

    def ref_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def _object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _write(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        with _s3_errors(f"put {self.ref_for(key)}"):
            created = self._put_if_absent(key, data, sha256, content_type)
        if not created:
            self._accept_existing(key, sha256)

    def _put_if_absent(self, key: str, data: bytes, sha256: str, content_type: str) -> bool:
        """One conditional PUT; False when the key already exists (412 PreconditionFailed)."""
        extra = {"ServerSideEncryption": self.sse} if self.sse else {}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._object_key(key),
                Body=data,
                ContentType=content_type,
                Metadata={"sha256": sha256},
                IfNoneMatch="*",
                **extra,
            )
        except ClientError as error:
            if _error_code(error) == "PreconditionFailed":
                return False
            raise
        return True

    def _accept_existing(self, key: str, sha256: str) -> None:
        """The key exists: an idempotent retry if its checksum is ours, otherwise a conflict."""
        ref = self.ref_for(key)
        with _s3_errors(f"head {ref}"):
            head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        if head.get("Metadata", {}).get("sha256") != sha256:
            raise ArchiveError(f"{ref}: exists with different content")

    def key_of(self, ref: str) -> str:
        object_key = self._object_key_of(ref)
        if self.prefix and not object_key.startswith(self.prefix + "/"):
            raise ArchiveError(f"{ref}: not under prefix {self.prefix}/")
        return object_key.removeprefix(self.prefix + "/") if self.prefix else object_key

    def delete(self, ref: str) -> None:
        """DeleteObject answers 204 whether or not the key existed. A versioned bucket keeps
        the old version behind a delete marker: erasure needs an unversioned bucket."""
        object_key = self._object_key_of(ref)
        with _s3_errors(f"delete {ref}"):
            self.client.delete_object(Bucket=self.bucket, Key=object_key)

    def _object_key_of(self, ref: str) -> str:
        bucket, _, object_key = ref.removeprefix("s3://").partition("/")
        if not ref.startswith("s3://") or bucket != self.bucket:
            raise ArchiveError(f"{ref}: not an object of bucket {self.bucket}")
        return object_key

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        listing = {"Bucket": self.bucket, "Prefix": self._object_key(prefix)}
        while True:
            with _s3_errors(f"list s3://{self.bucket}/{listing['Prefix']}"):
                page = self.client.list_objects_v2(**listing)
            for item in page.get("Contents", []):
                yield StoredObject(f"s3://{self.bucket}/{item['Key']}", item["LastModified"])
            if not page.get("IsTruncated"):
                return
            listing["ContinuationToken"] = page["NextContinuationToken"]

    def _read(self, ref: str) -> tuple[bytes, str | None]:
        object_key = self._object_key_of(ref)
        with _s3_errors(f"get {ref}"):
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            data = response["Body"].read()
        return data, response.get("Metadata", {}).get("sha256")


def _s3_client(
    endpoint_url: str | None, max_attempts: int, connect_timeout: float, read_timeout: float
) -> Any:
    config = Config(
        # botocore's `max_attempts` counts retries (N+1 requests); `total_max_attempts` is N.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # We verify our own SHA-256; the SDK's default CRC checksums trip some S3-compatibles.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Turn botocore failures (already retried) into a one-line ArchiveError."""
    try:
        yield
    except ClientError as error:
        message = error.response.get("Error", {}).get("Message", "")
        attempts = error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        after = f" (after {attempts} attempts)" if attempts > 1 else ""
        text = f"{_error_code(error)}: {message}{after}"
        raise ArchiveError(_one_line(f"S3 {what} failed: {text}")) from error
    except BotoCoreError as error:
        raise ArchiveError(_one_line(f"S3 {what} failed: {error}")) from error


def _one_line(text: str) -> str:
    """Server-supplied messages may hold newlines; an operator's log line must not."""
    return " ".join(text.split())


def open_store(url: str, settings: Settings) -> ArtifactStore:
    """`file://DIR` (relative or absolute) or `s3://bucket/prefix`."""
    if url.startswith("file://"):
        return FileStore(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ArchiveError(f"{url}: no bucket in S3 archive URL")
        return S3Store(bucket, prefix, settings.s3_endpoint_url, settings.s3_sse)
    raise ArchiveError(f"unsupported archive URL {url!r}: use file://DIR or s3://bucket/prefix")


def download(url: str, destination: Path, settings: Settings) -> Path:
    """Copy s3://bucket/key to `destination` (inputs dropped in S3 by a store or a carrier)."""
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket or not key:
        raise ArchiveError(f"{url}: expected s3://bucket/key")
    client = _s3_client(settings.s3_endpoint_url, 5, 5.0, 60.0)
    with _s3_errors(f"download {url}"):
        client.download_file(bucket, key, str(destination))
    return destination
