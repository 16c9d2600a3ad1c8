"""A real SMTP server (aiosmtpd) on loopback for tests, with scripted replies per recipient.

Register with `pytest_plugins = ["tests.fixtures_smtp"]`; use the `smtp_server` fixture.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes  # the message exactly as it came over the wire (dot-unstuffed)


@dataclass
class SmtpServer:
    """What the server received, and how it should answer particular recipients."""

    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address → reply to RCPT
    data_replies: dict[str, str] = field(default_factory=dict)  # address → reply after DATA
    hang_up_after_data: set[str] = field(default_factory=set)  # drop the line, no reply

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"


class ScriptedHandler:
    def __init__(self, state: SmtpServer) -> None:
        self.state = state

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.state.rcpt_replies:
            return self.state.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        recipients = set(envelope.rcpt_tos)
        if recipients & self.state.hang_up_after_data:
            server.transport.close()
            return "250 OK"  # never reaches the client: the connection is gone
        for address in envelope.rcpt_tos:
            if address in self.state.data_replies:
                return self.state.data_replies[address]
        self.state.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextmanager
def serving(handler: ScriptedHandler) -> Iterator[Any]:
    """An aiosmtpd server on the handler's host and port until the block ends; yields its state."""
    controller = Controller(handler, hostname=handler.state.host, port=handler.state.port)
    controller.start()
    try:
        yield handler.state
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """An aiosmtpd server on 127.0.0.1 and a free port, for one test."""
    with serving(ScriptedHandler(SmtpServer(host=HOST, port=free_port()))) as state:
        yield state
