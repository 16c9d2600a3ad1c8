"""Run the whole test suite (called by `python3 infra/dev.py test` and by CI).

Checks first that the real parts the tests talk to are reachable, so a missing PostgreSQL
is one clear line, not two hundred failures. Nothing here skips a test.
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


def postgres_reachable() -> bool:
    parsed = urlparse(PG_URL.replace("+psycopg", ""))
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 5432), timeout=3):
            return True
    except OSError:
        return False


def main(args: list[str]) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.chdir(ROOT)
    if not postgres_reachable():
        print(f"journeys tests: PostgreSQL is not reachable at {PG_URL} "
              "(set JOURNEYS_TEST_PG_URL); the PostgreSQL tests are required.", file=sys.stderr)
        return 2
    return pytest.main(["-p", "no:cacheprovider", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
