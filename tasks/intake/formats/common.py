"""What every format shares: errors, opening and detecting files, reasons, small mappers.

The underscore names are private to this package: its format modules share them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError

DETECT_LINES = 50  # JSON objects looked at to tell Shopify from canonical


class IntakeError(Exception):
    """A whole file cannot be read; the message is one line, fit to print without a traceback."""


class MappingError(ValueError):
    """A record's structure is wrong before validation can even start."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _open(path: Path) -> io.TextIOWrapper:
    if not path.is_file():
        raise IntakeError(f"{path}: no such file")
    return path.open(encoding="utf-8-sig", newline="")


def _head(path: Path, count: int) -> list[str]:
    """The first `count` non-blank lines, or IntakeError if the file is not UTF-8 text."""
    try:
        with _open(path) as handle:
            return list(islice((line for line in handle if line.strip()), count))
    except UnicodeDecodeError:
        why = "not UTF-8 text; expected JSON Lines or CSV"
        raise IntakeError(_undetectable(path, why)) from None


def _undetectable(path: Path, why: str = "expected JSON Lines or CSV") -> str:
    return f"{path.name}: cannot detect format ({why}); use --format"


def _choose_format(
    path: Path, fmt: str | None, allowed: tuple[str, ...], json_format: Callable[[Path], str]
) -> str:
    head = _head(path, 1)
    if fmt is not None:
        if fmt not in allowed:
            raise IntakeError(f"unknown format {fmt!r}; expected one of {', '.join(allowed)}")
        return fmt
    if not head:
        raise IntakeError(f"{path.name}: the file is empty")
    first = head[0].lstrip()
    if first.startswith("{"):
        return json_format(path)
    if first.startswith("[") or "," not in first:
        raise IntakeError(_undetectable(path))
    return "csv"


def _json_keys(path: Path) -> Iterator[set[str]]:
    for line in _head(path, DETECT_LINES):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            yield set(data)


def _require_columns(path: Path, required: tuple[str, ...], what: str) -> None:
    header = next(csv.reader(_head(path, 1)), [])
    missing = [name for name in required if name not in {h.strip() for h in header}]
    if missing:
        raise IntakeError(f"{path.name}: not a CSV of {what}: missing columns {', '.join(missing)}")


def _guard(path: Path, records: Iterator[Any]) -> Iterator[Any]:
    """Turn a decoding failure half-way through the file into a one-line IntakeError."""
    try:
        yield from records
    except UnicodeDecodeError as exc:
        raise IntakeError(f"{path.name}: not UTF-8 text at byte {exc.start}") from None
    except csv.Error as exc:
        raise IntakeError(f"{path.name}: unreadable CSV: {exc}") from None


def _clean_message(error: dict[str, Any]) -> str:
    if error["type"] == "missing":
        return "required"
    if error.get("input") is None and error["type"].endswith("_type"):
        return "required"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def dotted(loc: Iterable[Any]) -> str:
    """('lines', 0, 'sku') → 'lines[0].sku'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "_record"


def validation_reasons(
    error: ValidationError, name: Callable[[tuple[Any, ...]], str] = dotted
) -> list[dict[str, str]]:
    """One {field, reason} per pydantic error, with fields named as the input names them."""
    return [
        {"field": name(tuple(e["loc"])) if e["loc"] else "_record", "reason": _clean_message(e)}
        for e in error.errors(include_url=False)
    ]


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """Drop missing values so the model's defaults (or its "required") apply."""
    return {k: v for k, v in values.items() if v is not None and v != ""}


def _object(record: dict[str, Any], key: str) -> dict[str, Any]:
    value = record.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MappingError(key, "expected an object")
    return value


def _objects(record: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = record.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MappingError(key, "expected a list of objects")
    return value


def _name_values(record: dict[str, Any], key: str) -> dict[str, Any]:
    """Shopify's [{name, value}] lists (properties, note_attributes) as a dict."""
    return {
        str(item.get("name", item.get("key"))): item.get("value")
        for item in _objects(record, key)
        if item.get("name", item.get("key")) is not None
    }


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "y")


def _decimal(value: Any, field: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise MappingError(field, f"not a number: {value!r}") from None
    if not number.is_finite():
        raise MappingError(field, f"not a finite number: {value!r}")
    return number


def _validate(
    model: type[Any], data: dict[str, Any], name: Callable[[tuple[Any, ...]], str]
) -> Any | list[dict[str, str]]:
    """The validated model, or the per-field reasons it failed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return validation_reasons(exc, name)


def _json_records(path: Path) -> Iterator[tuple[int, str, dict[str, Any] | str]]:
    """(line number, raw text, object) per non-blank line; a reason string if not an object."""
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except ValueError as exc:
                yield number, text, f"not valid JSON: {exc}"
                continue
            yield number, text, data if isinstance(data, dict) else "expected a JSON object"


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:64]
