#!/usr/bin/env python3
"""Set up a local virtualenv from the lock file, then run the demo or the test suite.

Needs only python3. Safe to rerun: the install step is skipped while requirements.lock,
pyproject.toml and this file are unchanged (a stamp in .venv records their hash).

    python3 infra/dev.py demo [journeys demo options]
    python3 infra/dev.py test [pytest options]
    python3 infra/dev.py journeys ARGS...     # any CLI command inside the venv
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".journeys-installed"
UV_VERSION = "0.13.9"


def _inputs_hash() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.lock", "pyproject.toml", "infra/dev.py"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def _install_requirements() -> None:
    """uv is ~20x faster than pip here; fall back to plain pip if it cannot be installed."""
    try:
        _run(BIN / "pip", "install", "-q", "--disable-pip-version-check", f"uv=={UV_VERSION}")
        uv = (BIN / "uv", "pip", "install", "-q", "--python", BIN / "python")
        _run(*uv, "-r", "requirements.lock")
        _run(*uv, "--no-deps", "-e", ".")
    except subprocess.CalledProcessError:
        pip = (BIN / "pip", "install", "-q", "--disable-pip-version-check")
        _run(*pip, "-r", "requirements.lock")
        _run(*pip, "--no-deps", "-e", ".")


def ensure_venv() -> None:
    if not (BIN / "python").exists():
        print("journeys: creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    wanted = _inputs_hash()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("journeys: installing locked dependencies into .venv", flush=True)
    _install_requirements()
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "journeys", "setup"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if command == "setup":
        return 0
    if command == "test":
        cmd = [str(BIN / "python"), str(ROOT / "infra" / "run_tests.py"), *rest]
    elif command == "demo":
        cmd = [str(BIN / "journeys"), "demo", *rest]
    else:
        cmd = [str(BIN / "journeys"), *rest]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
