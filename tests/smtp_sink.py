"""A real SMTP server (aiosmtpd) in its own process that keeps every delivery as a file.

The crash matrix needs a mail server that outlives the processes it kills and counts every
delivery, duplicates included: `python -m tests.smtp_sink SPOOL_DIR PORT` writes each accepted
message to SPOOL_DIR/<n>.eml before answering 250, and runs until terminated.
"""

from __future__ import annotations

import itertools
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class SpoolHandler:
    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.numbers = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            path = self.spool / f"{next(self.numbers):08d}.eml"
        path.write_bytes(envelope.original_content)
        return "250 Message accepted"


def main(spool: str, port: str) -> None:
    folder = Path(spool)
    folder.mkdir(parents=True, exist_ok=True)
    controller = Controller(SpoolHandler(folder), hostname="127.0.0.1", port=int(port))
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main(*sys.argv[1:3])
