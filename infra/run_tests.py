"""Run the whole test suite (called by `python3 infra/dev.py test` and by CI).

Checks first that the real parts the tests talk to are reachable, so a missing PostgreSQL
is one clear line, not two hundred failures. Nothing here skips a test.

Test files run on JOURNEYS_TEST_WORKERS pytest-xdist workers (default 2, one per core here);
tests/conftest.py keeps each file, and each directory that shares a Prefect server, on one
worker. `-n 0` on the command line runs them all in this one process, in order.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("JOURNEYS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WORKERS = os.environ.get("JOURNEYS_TEST_WORKERS", "2")


def postgres_reachable() -> bool:
    parsed = urlparse(PG_URL.replace("+psycopg", ""))
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 5432), timeout=3):
            return True
    except OSError:
        return False


def parallel_options(args: list[str]) -> list[str]:
    """`-n WORKERS --dist loadfile`, units in tests/conftest.py's order (longest first), unless
    the caller chose the workers or turned xdist off."""
    chosen = any(arg in {"-n", "--numprocesses", "--dist", "no:xdist"}
                 or arg.startswith(("-n", "--numprocesses=", "--dist=")) for arg in args)
    return [] if chosen else ["-n", WORKERS, "--dist", "loadfile", "--no-loadscope-reorder"]


def main(args: list[str]) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.chdir(ROOT)
    if not postgres_reachable():
        print(f"journeys tests: PostgreSQL is not reachable at {PG_URL} "
              "(set JOURNEYS_TEST_PG_URL); the PostgreSQL tests are required.", file=sys.stderr)
        return 2
    return pytest.main(["-p", "no:cacheprovider", *parallel_options(args), *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
