"""Reading configs/*.yaml into a `Config`: every problem of every file, one line each."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tasks.config.base import ConfigError
from tasks.config.model import SECTIONS, Config

LINKS_BASE_URL_ENV = "JOURNEYS_LINKS_BASE_URL"


@lru_cache(maxsize=4)
def load_config(config_dir: Path) -> Config:
    """The validated config, or ConfigError naming every problem found (one per line)."""
    config, problems = _build(Path(config_dir).resolve())
    if config is None:
        raise ConfigError("\n".join(problems))
    return config


def check_config(config_dir: Path) -> list[str]:
    """Every problem in the config folder, one line each naming the file and the key."""
    return _build(Path(config_dir).resolve())[1]


def _build(config_dir: Path) -> tuple[Config | None, list[str]]:
    """All files are validated before the cross-file rules, so one run reports everything."""
    sections, problems = _read_sections(config_dir)
    if problems:
        return None, problems
    if base := os.environ.get(LINKS_BASE_URL_ENV):  # the mails point at this edge instead
        sections["store"] = sections["store"].model_copy(update={"links_base_url": base})
    try:
        return Config(dir=config_dir, **sections), []
    except ValidationError as exc:
        return None, [f"{config_dir}: {error['msg']}" for error in exc.errors()]


def _read_sections(config_dir: Path) -> tuple[dict[str, BaseModel], list[str]]:
    sections: dict[str, BaseModel] = {}
    problems: list[str] = []
    for name in SECTIONS:
        path = config_dir / f"{name}.yaml"
        model: type[BaseModel] = Config.model_fields[name].annotation  # type: ignore[assignment]
        try:
            sections[name] = model.model_validate(_read_yaml(path))
        except ConfigError as exc:
            problems.append(str(exc))
        except ValidationError as exc:
            problems += _describe(exc, path)
    return sections, problems


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file missing: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _describe(error: ValidationError, path: Path) -> list[str]:
    """One line per error: file, dotted key, pydantic's message."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        lines.append(f"{path}: {where}: {item['msg']}" if where else f"{path}: {item['msg']}")
    return lines
