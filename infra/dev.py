#!/usr/bin/env python3
"""Set up a local virtualenv from the lock file, then run the demo or the test suite.

Needs only python3. Safe to rerun: the install step is skipped while requirements.lock,
pyproject.toml and this file are unchanged (a stamp in .venv records their hash); the
translation catalogs are compiled when a .po is newer than its .mo. `test` also
installs Debian's chromium (apt-get) when /usr/bin/chromium is missing: the UI test drives it.
`setup`, `demo` and `test` install the libraries WeasyPrint draws PDF documents with (Pango,
HarfBuzz, a font) the same way when they are missing.

    python3 infra/dev.py demo [journeys demo options]
    python3 infra/dev.py test [pytest options]
    python3 infra/dev.py journeys ARGS...     # any CLI command inside the venv
"""

from __future__ import annotations

import ctypes.util
import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".journeys-installed"
UV_VERSION = "0.13.9"
CHROMIUM = Path("/usr/bin/chromium")
APT_GET = ("apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120")
# What WeasyPrint (PDF documents: tasks/documents.py) loads, as (Debian package, library).
PDF_LIBRARIES = (("libpango-1.0-0", "pango-1.0"), ("libpangoft2-1.0-0", "pangoft2-1.0"),
                 ("libharfbuzz-subset0", "harfbuzz-subset"))
PDF_FONT = ("fonts-dejavu-core", Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))


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


def compile_catalogs() -> None:
    """The translation catalogs' .mo files are build output (gitignored): compile the ones
    missing or older than their .po. Cheap when nothing changed."""
    _run(BIN / "python", "-c", "from pathlib import Path; from tasks.i18n import "
         "compile_catalogs; compile_catalogs(Path('configs/locales'))")


def _apt(*args: str) -> tuple[bool, str]:
    """One apt-get call, quiet unless it fails: (succeeded, its last line of output)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run([*APT_GET, *args], env=env, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else f"exit code {done.returncode}"


def ensure_chromium() -> str | None:
    """The browser test drives Debian's Chromium (Playwright cannot download its own here).

    Returns None when it is there, else a one-line reason it could not be installed.
    """
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and there is no apt-get to install it"
    print("journeys: installing Debian's chromium for the browser test (apt-get)", flush=True)
    started = time.monotonic()
    ok, last = _apt("install", "chromium")
    if not ok:  # a fresh machine's package lists may be stale or empty
        ok, last = _apt("update")
        if ok:
            ok, last = _apt("install", "chromium")
    if not ok:
        return f"could not install chromium with apt-get ({last}); run: apt-get install -y chromium"
    if not CHROMIUM.exists():
        return f"apt-get installed chromium, yet {CHROMIUM} is missing"
    print(f"journeys: chromium installed in {time.monotonic() - started:.0f}s", flush=True)
    return None


def _apt_install(*packages: str) -> tuple[bool, str]:
    """Install, refreshing the package lists once if they are stale or empty."""
    ok, last = _apt("install", *packages)
    if not ok:
        ok, last = _apt("update")
        if ok:
            ok, last = _apt("install", *packages)
    return ok, last


def ensure_pdf_libraries() -> str | None:
    """Debian's Pango, HarfBuzz (subsetting) and a font for WeasyPrint's PDFs.

    Returns None when they are there, else a one-line reason they could not be installed.
    """
    missing = [package for package, library in PDF_LIBRARIES
               if ctypes.util.find_library(library) is None]
    missing += [] if PDF_FONT[1].exists() else [PDF_FONT[0]]
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"PDF documents need {', '.join(missing)}; there is no apt-get to install them"
    print(f"journeys: installing {', '.join(missing)} for PDF documents (apt-get)", flush=True)
    ok, last = _apt_install(*missing)
    if not ok:
        return (f"could not install {', '.join(missing)} with apt-get ({last}); run: "
                f"apt-get install -y {' '.join(missing)}")
    return None


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "journeys", "setup"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ensure_venv()
    compile_catalogs()
    command, rest = argv[0], argv[1:]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    pdf_problem = ensure_pdf_libraries() if command in {"setup", "demo", "test"} else None
    if pdf_problem and command != "test":  # the journey runs; its print step logs the failure
        print(f"journeys: {pdf_problem}", file=sys.stderr)
    if command == "setup":
        return 0
    if command == "test":
        if problem := pdf_problem or ensure_chromium():
            print(f"journeys tests: {problem}", file=sys.stderr)
            return 2
        cmd = [str(BIN / "python"), str(ROOT / "infra" / "run_tests.py"), *rest]
    elif command == "demo":
        cmd = [str(BIN / "journeys"), "demo", *rest]
    else:
        cmd = [str(BIN / "journeys"), *rest]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
