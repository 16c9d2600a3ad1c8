"""The quality gate: one GX validation per batch frame, failures mapped back to row positions.

great_expectations is imported lazily (it costs seconds) and its context, data asset and suites
are built once per process and kind.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.intake.schema import OrderIn, Rejected
from tasks.quality.frames import order_frame
from tasks.quality.suites import SUITES_DIR, build_suite, default_params, parameter_names

__all__ = ["GateError", "GateFailed", "GateResult", "as_rejected", "gate_orders",
           "order_frame", "validate_frame"]

RESULT_FORMAT = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
LIST_COLUMNS = {"feedback": ("tags",)}  # list-valued columns, validated element by element
SAMPLE = 20  # row positions kept per expectation in the archived result
_lock = threading.Lock()  # one GX context per process; validations take turns


class GateError(RuntimeError):
    """The suite could not be evaluated (a missing column, a bad kwarg): a bug, not bad data."""


class GateFailed(RuntimeError):
    """Too many rows of a batch failed; nothing of it may be published."""

    def __init__(self, message: str, result: GateResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class GateResult:
    """What one validation found: failures by row position, counts, and a compact archive."""

    kind: str
    success: bool
    failures: dict[int, list[dict[str, Any]]]  # rows to quarantine
    stats: dict[str, int]
    batch_failures: list[dict[str, Any]] = field(default_factory=list)  # no row to blame
    summary: list[dict[str, Any]] = field(default_factory=list)
    # Rows that failed only expectations with a `meta.hold` code: stored, then held by
    # verification with that code. They are real records, so they do not count as failed rows.
    holds: dict[int, list[str]] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        """Failed rows / rows (0 for an empty batch)."""
        return self.stats["failed_rows"] / self.stats["rows"] if self.stats["rows"] else 0.0

    def to_json(self) -> dict[str, Any]:
        """A compact, JSON-serialisable record of the validation for archiving."""
        return {"kind": self.kind, "success": self.success, "stats": dict(self.stats),
                "expectations": self.summary, "batch_failures": self.batch_failures}


@cache
def _context() -> Any:
    """The process's ephemeral GX context, without progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


@cache
def _batch_definition(kind: str) -> Any:
    """A whole-dataframe batch definition for `kind`, built once per process."""
    asset = _context().data_sources.add_pandas(name=f"journeys_{kind}").add_dataframe_asset(kind)
    return asset.add_batch_definition_whole_dataframe(f"{kind}_batch")


@cache
def _suite(kind: str, directory: Path) -> Any:
    """The GX suite for `kind`, built once per process and suite directory."""
    return build_suite(kind, directory)


def validate_frame(
    kind: str, frame: pd.DataFrame, params: dict[str, Any] | None = None,
    directory: Path = SUITES_DIR,
) -> GateResult:
    """Run the `kind` suite once over the whole frame; failures keyed by row position."""
    values = default_params(kind) | (params or {})
    missing = parameter_names(kind, directory) - set(values)
    if missing:
        raise GateError(f"{kind} suite needs parameters {sorted(missing)}")
    data = _positional(kind, frame)
    with _lock:
        batch = _batch_definition(kind).get_batch(batch_parameters={"dataframe": data})
        result = batch.validate(_suite(kind, Path(directory)), result_format=RESULT_FORMAT,
                                expectation_parameters=values)
    return _gate_result(kind, result, len(frame))


def _positional(kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame indexed 0..n-1; list columns exploded, keeping each element's row position."""
    data = frame.reset_index(drop=True)
    for column in LIST_COLUMNS.get(kind, ()):
        if column in data.columns:
            data = data.explode(column)
    return data


def _gate_result(kind: str, result: Any, rows: int) -> GateResult:
    """GateResult from a GX ExpectationSuiteValidationResult."""
    failures: dict[int, list[dict[str, Any]]] = {}
    batch_failures, summary = [], []
    for item in result.results:
        _raise_if_broken(kind, item)
        reason = _reason(item)
        positions = list(dict.fromkeys(int(i) for i in
                                       (item.result or {}).get("unexpected_index_list") or []))
        summary.append(reason | {"success": bool(item.success),
                                 "unexpected_count": (item.result or {}).get("unexpected_count", 0),
                                 "rows_sample": positions[:SAMPLE]})
        if not item.success and not positions:
            batch_failures.append(reason)
        for position in positions:
            failures.setdefault(position, []).append(reason)
    failures, holds = _split_holds(failures)
    stats = {"evaluated": int(result.statistics["evaluated_expectations"]),
             "successful": int(result.statistics["successful_expectations"]),
             "unsuccessful": int(result.statistics["unsuccessful_expectations"]),
             "rows": rows, "failed_rows": len(failures), "held_rows": len(holds)}
    return GateResult(kind, bool(result.success), dict(sorted(failures.items())), stats,
                      batch_failures, summary, dict(sorted(holds.items())))


def _split_holds(
    failures: dict[int, list[dict[str, Any]]]
) -> tuple[dict[int, list[dict[str, Any]]], dict[int, list[str]]]:
    """Rows with any quarantining failure stay failures; rows whose failures all carry a hold
    code become holds (position → codes)."""
    held = {pos: [f["hold"] for f in found] for pos, found in failures.items()
            if all(f.get("hold") for f in found)}
    return {pos: found for pos, found in failures.items() if pos not in held}, held


def _reason(item: Any) -> dict[str, Any]:
    """{"expectation", "column", "reason"} (and "hold" if set) for one expectation result."""
    config = item.expectation_config
    meta = config.meta or {}
    reason = {"expectation": config.type, "column": config.kwargs.get("column"),
              "reason": meta.get("reason")}
    return reason | ({"hold": meta["hold"]} if meta.get("hold") else {})


def _raise_if_broken(kind: str, item: Any) -> None:
    """GX reports an expectation it could not evaluate as an exception, not a failure: raise."""
    info = item.exception_info or {}
    entries = info.values() if "raised_exception" not in info else [info]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            name = item.expectation_config.type
            raise GateError(f"{kind} suite: {name} could not run: {entry.get('exception_message')}")


# ---------------------------------------------------------------- orders


def gate_orders(
    orders: list[OrderIn], now: datetime, max_failure_rate: float
) -> tuple[list[OrderIn], list[tuple[OrderIn, list[dict[str, str]]]], GateResult]:
    """Split orders into passed and rejected (with quarantine reasons); raise GateFailed if too
    many rows fail. Passed orders with a hold (`result.holds`) are stored and held later."""
    result = validate_frame("orders", order_frame(orders, now))
    if result.batch_failures:
        names = ", ".join(f["expectation"] for f in result.batch_failures)
        raise GateFailed(f"orders batch failed the quality gate: {names}", result)
    if result.failure_rate > max_failure_rate:
        raise GateFailed(_over_threshold("orders", result, max_failure_rate), result)
    passed = [order for i, order in enumerate(orders) if i not in result.failures]
    rejected = [(orders[i], quarantine_reasons(found)) for i, found in result.failures.items()]
    return passed, rejected, result


def _over_threshold(kind: str, result: GateResult, max_failure_rate: float) -> str:
    """E.g. "orders batch failed the quality gate: 37 of 100 rows (37.0%) failed, above …"."""
    failed, rows = result.stats["failed_rows"], result.stats["rows"]
    return (f"{kind} batch failed the quality gate: {failed} of {rows} rows "
            f"({result.failure_rate:.1%}) failed, above the {max_failure_rate * 100:g}% threshold")


def quarantine_reasons(failures: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Gate failures in the quarantine's shape: one {field, reason, check} per failure."""
    return [{"field": f["column"] or "_record", "reason": f["reason"],
             "check": f["expectation"]} for f in failures]


def as_rejected(order: OrderIn, reasons: list[dict[str, str]]) -> Rejected:
    """A gate-rejected order as a quarantine record (raw text and origin kept)."""
    return Rejected("order", order.source, order.raw_text(), reasons, order.origin(),
                    order.external_id)
