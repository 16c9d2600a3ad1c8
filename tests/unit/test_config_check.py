"""One Config: every configs/*.yaml is checked at load, every problem named with file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from infra.stack import StackError, deploy
from tasks.config import SECTIONS, ConfigError, check_config, load_config
from tasks.settings import get_settings
from tests.conftest import ROOT

# A typo in each file that used to be read only when a batch first needed it.
LATE_TYPOS = {
    "loyalty": (("tiers", 0, "min_spend"), "lots", "tiers.0.min_spend"),
    "aftercare": (("feedback", "low_rating_threshold"), 9, "feedback.low_rating_threshold"),
    "tracking": (("after_delivery", "care_guide"), "soon", "after_delivery.care_guide"),
    "governor": (("quiet_hours", "start"), "late", "quiet_hours.start"),
}


def config_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", folder)
    return folder


def set_key(folder: Path, name: str, keys: tuple, value: object) -> None:
    path = folder / f"{name}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    target = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def test_the_shipped_config_has_no_problems_and_every_file_is_a_section():
    assert check_config(ROOT / "configs") == []
    files = {path.stem for path in (ROOT / "configs").glob("*.yaml")}
    assert files == set(SECTIONS)


@pytest.mark.parametrize("name", sorted(LATE_TYPOS))
def test_a_typo_in_a_late_file_is_refused_at_load_naming_file_and_key(tmp_path, name):
    keys, value, dotted = LATE_TYPOS[name]
    folder = config_copy(tmp_path)
    set_key(folder, name, keys, value)
    with pytest.raises(ConfigError, match=rf"configs/{name}\.yaml: {dotted}: "):
        load_config(folder)


def test_every_problem_is_reported_together_one_line_each(tmp_path):
    folder = config_copy(tmp_path)
    for name, (keys, value, _) in LATE_TYPOS.items():
        set_key(folder, name, keys, value)
    set_key(folder, "governor", ("caps",), "daily")  # a second problem in the same file
    (folder / "pages.yaml").write_text("related_products: [", encoding="utf-8")
    problems = check_config(folder)
    expected = [f"configs/{name}.yaml: {dotted}: " for name, (_, _, dotted) in LATE_TYPOS.items()]
    expected += ["configs/governor.yaml: caps: ", "configs/pages.yaml: not valid YAML"]
    for start in expected:
        assert sum(start in line for line in problems) == 1, (start, problems)
    assert len(problems) == len(expected)


def test_a_missing_file_is_a_problem_like_any_other(tmp_path):
    folder = config_copy(tmp_path)
    (folder / "tracking.yaml").unlink()
    assert check_config(folder) == [f"config file missing: {folder.resolve()}/tracking.yaml"]


def test_deploy_refuses_a_bad_config_before_touching_the_server(tmp_path, monkeypatch):
    folder = config_copy(tmp_path)
    set_key(folder, "tracking", ("late_case_after_days",), -1)
    monkeypatch.setenv("JOURNEYS_CONFIG_DIR", str(folder))
    get_settings.cache_clear()
    try:
        with pytest.raises(StackError, match=r"configs/tracking\.yaml: late_case_after_days: "):
            deploy(api_url="http://127.0.0.1:9/api")  # nothing listens there: never reached
    finally:
        get_settings.cache_clear()


def test_a_delay_for_a_step_the_journey_does_not_have_is_refused(tmp_path):
    """tracking.yaml after_delivery names registered steps only (tasks/journey.py)."""
    folder = config_copy(tmp_path)
    set_key(folder, "tracking", ("after_delivery", "care_guid"), 72)
    problems = check_config(folder)
    assert len(problems) == 1
    assert "configs/tracking.yaml: after_delivery: " in problems[0]
    assert "care_guid" in problems[0]
