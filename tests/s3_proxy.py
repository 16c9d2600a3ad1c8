"""A loopback TCP proxy between an S3 client and the real S3 server that injects network faults.

One HTTP request per client connection: the proxy reads the request (head + Content-Length
body), decides what to do with it, and closes the connection afterwards. Forwarded requests go
upstream with `Connection: close`, so the server's response is everything it sends before EOF,
and the client is told to close too. Faults are scripted per HTTP method: `proxy.script("PUT",
["slowdown", "slowdown"])` answers the next two PUTs with a raw 503 SlowDown and forwards the
rest; an endless iterator (`itertools.repeat("slowdown")`) makes the fault persistent.

Actions: `forward`; `slowdown` (503 SlowDown, never reaches the server); `reset` (TCP RST
before any response, never reaches the server); `stall` (no answer until the client gives up,
never reaches the server); `lose_response` (the server applies the request, then the client's
connection is reset, so the response is lost).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

STALL_LIMIT_S = 15.0  # a stalled connection is dropped after this long, whatever the client does
IO_TIMEOUT_S = 10.0
ACTIONS = {"forward", "slowdown", "reset", "stall", "lose_response"}
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
)
SLOWDOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(SLOWDOWN_BODY), SLOWDOWN_BODY)
)


@dataclass
class Seen:
    """One request the proxy received, what it did with it and the server's status (if asked)."""

    method: str
    path: str
    action: str
    status: int | None = None


class FaultProxy:
    """Listens on 127.0.0.1 (a free port); `endpoint_url` is what the client should use."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.seen: list[Seen] = []
        self.errors: list[str] = []  # failures inside the proxy itself: a test should assert none
        self._scripts: dict[str, Iterator[str]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.endpoint_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._accept_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._accept_thread.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def script(self, method: str, actions: Iterable[str]) -> None:
        """The actions for the next requests with this method; `forward` once they run out."""
        with self._lock:
            self._scripts[method.upper()] = iter(actions)

    def clear(self) -> None:
        with self._lock:
            self._scripts.clear()

    def count(self, method: str, action: str | None = None) -> int:
        """Requests with this method the proxy received (only those it treated so, if given)."""
        with self._lock:
            return sum(1 for s in self.seen if s.method == method and action in (None, s.action))

    def log(self) -> list[tuple[str, str, int | None]]:
        """(method, action, server status) per request, in arrival order."""
        with self._lock:
            return [(s.method, s.action, s.status) for s in self.seen]

    # --- internals ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._guarded, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _next_request(self, method: str, path: str) -> Seen:
        with self._lock:
            action = next(self._scripts.get(method, iter(())), "forward")
            if action not in ACTIONS:
                raise ValueError(f"unknown proxy action {action!r}")
            self.seen.append(Seen(method, path, action))
            return self.seen[-1]

    def _guarded(self, client: socket.socket) -> None:
        try:
            self._handle(client)
        except Exception as error:  # recorded for the test; a dead thread would only print
            with self._lock:
                self.errors.append(repr(error))

    def _handle(self, client: socket.socket) -> None:
        with client:
            client.settimeout(IO_TIMEOUT_S)
            request = _read_request(client)
            if request is None:
                return
            method, path, raw = request
            seen = self._next_request(method, path)
            if seen.action == "slowdown":
                client.sendall(SLOWDOWN)
            elif seen.action == "reset":
                _reset(client)
            elif seen.action == "stall":
                self._stall(client)
            else:
                response = self._forward(raw)
                seen.status = int(response.split(b" ", 2)[1])
                if seen.action == "lose_response":
                    _reset(client)
                else:
                    client.sendall(response)

    def _stall(self, client: socket.socket) -> None:
        """Say nothing until the client closes (its read timeout), the proxy stops, or a limit."""
        client.settimeout(0.1)
        for _ in range(int(STALL_LIMIT_S / 0.1)):
            if self._stopping.is_set():
                return
            try:
                if client.recv(1024) == b"":
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def _forward(self, raw: bytes) -> bytes:
        with socket.create_connection(self.upstream, timeout=IO_TIMEOUT_S) as upstream:
            upstream.sendall(raw)
            chunks = []
            while chunk := upstream.recv(65536):
                chunks.append(chunk)
        return _force_close(b"".join(chunks))


def _read_request(sock: socket.socket) -> tuple[str, str, bytes] | None:
    """(method, path, request bytes with `Connection: close`), or None if the client left."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ValueError(f"proxy supports Content-Length bodies only: {request_line}")
    if headers.get("expect", "").lower() == "100-continue":  # botocore sends it on PUTs
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # we take the body; upstream gets it plain
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    dropped = ("connection:", "expect:")
    kept = [line for line in header_lines if not line.lower().startswith(dropped)]
    raw = "\r\n".join([request_line, *kept, "Connection: close", "", ""]).encode("latin-1")
    method, path, _ = request_line.split(" ", 2)
    return method, path, raw + body


def _force_close(response: bytes) -> bytes:
    """Make sure the client does not reuse the connection the proxy is about to close."""
    head, sep, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + sep + body


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST ("connection reset by peer")."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
