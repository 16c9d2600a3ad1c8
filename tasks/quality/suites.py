"""Declarative expectation suites: our small JSON format, loaded once and turned into GX suites.

Each file in configs/expectations is a list of
`{"expectation": "expect_…", "kwargs": {...}, "meta": {"reason": "…"}}`; a kwarg may be
`{"$PARAMETER": "name"}`, filled per validation from `validate_frame(..., params)`. A
`meta.hold` code (e.g. "total_mismatch") makes a failing row a verification hold instead of a
quarantine (tasks/quality/gate.py).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

SUITES_DIR = Path(__file__).resolve().parents[2] / "configs" / "expectations"
KINDS = ("orders", "tracking_events", "feedback", "outbox", "ledger")
SPEC_KEYS = {"expectation", "kwargs", "meta"}


class SuiteError(ValueError):
    """A suite file is missing or malformed."""


@cache
def load_spec(kind: str, directory: Path = SUITES_DIR) -> tuple[dict[str, Any], ...]:
    """The suite file for `kind`, checked for our format (read once per process)."""
    path = Path(directory) / f"{kind}.json"
    if not path.is_file():
        raise SuiteError(f"no expectation suite for {kind!r} at {path}")
    items = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(items, list) or not items:
        raise SuiteError(f"{path}: a suite is a non-empty JSON list of expectations")
    return tuple(_checked(item, path) for item in items)


def _checked(item: Any, path: Path) -> dict[str, Any]:
    """One expectation entry, or SuiteError naming what is wrong with it."""
    if not isinstance(item, dict) or not set(item) <= SPEC_KEYS or "expectation" not in item:
        raise SuiteError(f"{path}: bad entry {item!r}; keys are {sorted(SPEC_KEYS)}")
    if not str(item["expectation"]).startswith("expect_"):
        raise SuiteError(f"{path}: {item['expectation']!r} is not an expectation name")
    if not str(item.get("meta", {}).get("reason", "")).strip():
        raise SuiteError(f"{path}: {item['expectation']} needs meta.reason")
    return {"expectation": item["expectation"], "kwargs": dict(item.get("kwargs", {})),
            "meta": dict(item["meta"])}


def parameter_names(kind: str, directory: Path = SUITES_DIR) -> set[str]:
    """Names used as {"$PARAMETER": name} in the suite."""
    return {value["$PARAMETER"] for item in load_spec(kind, directory)
            for value in item["kwargs"].values()
            if isinstance(value, dict) and "$PARAMETER" in value}


def default_params(kind: str) -> dict[str, Any]:
    """Parameter values used when the caller gives none."""
    if kind == "orders":
        from babel.numbers import list_currencies

        return {"currencies": sorted(list_currencies())}
    if kind == "outbox":
        return {"suppressed": []}
    return {}


def build_suite(kind: str, directory: Path = SUITES_DIR) -> Any:
    """A GX ExpectationSuite for `kind` (imports great_expectations)."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    suite = gx.ExpectationSuite(name=kind)
    for item in load_spec(kind, directory):
        suite.add_expectation_configuration(ExpectationConfiguration(
            type=item["expectation"], kwargs=copy.deepcopy(item["kwargs"]),
            meta=copy.deepcopy(item["meta"])))
    return suite
