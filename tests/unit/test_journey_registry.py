"""The journey is declared once (tasks/journey.py): nothing schedules or runs a step it lacks."""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

import yaml

from tasks import journey
from tasks.states import OrderState
from tasks.store import journal

ROOT = Path(__file__).resolve().parents[2]
# Calls that name a step, and the position of the step argument (schedule_steps: its tuples').
STEP_ARGUMENT = {"set_steps": 1, "finish_steps": 1, "reschedule_steps": 1, "close_missing": 1,
                 "apply_transitions": 1, "due_order_ids": 1, "reopen_step": 2, "schedule_step": 1,
                 "_finish_steps": 1, "_close_finished": 1, "run_stage_batch": 0}


VISITING: set[Path] = set()


@functools.cache
def module_strings(path: Path) -> dict[str, str]:
    """A module's string constants: `X = "s"`, `A, B = "a", "b"`, `X = step("s").name`, and
    names it imports from another module of the project."""
    tree = ast.parse(path.read_text())
    found: dict[str, str] = {}
    VISITING.add(path)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks"):
            source = module_path(node.module)
            if source is not None and source not in VISITING:
                imported = module_strings(source)
                found |= {a.asname or a.name: imported[a.name] for a in node.names
                          if a.name in imported}
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                found |= bindings(target, node.value)
    VISITING.discard(path)
    return found


def module_path(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def bindings(target: ast.expr, value: ast.expr) -> dict[str, str]:
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
        pairs = zip(target.elts, value.elts, strict=False)
        return {k: v for t, val in pairs for k, v in bindings(t, val).items()}
    text = string_of(value)
    return {target.id: text} if isinstance(target, ast.Name) and text is not None else {}


def string_of(value: ast.expr) -> str | None:
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    if (isinstance(value, ast.Attribute) and value.attr == "name"
            and isinstance(value.value, ast.Call) and value.value.args):
        return string_of(value.value.args[0])  # step("x").name
    return None


def named_steps(path: Path) -> set[str]:
    """Every step name the module passes to a call that schedules, runs or closes steps."""
    strings, names = module_strings(path), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        called = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if called == "schedule_steps" and len(node.args) > 1:
            candidates = [t.elts[1] for t in ast.walk(node.args[1])
                          if isinstance(t, ast.Tuple) and len(t.elts) == 3]
        elif called in STEP_ARGUMENT and len(node.args) > STEP_ARGUMENT[called]:
            candidates = [node.args[STEP_ARGUMENT[called]]]
        else:
            continue
        for arg in candidates:
            text = string_of(arg) if not isinstance(arg, ast.Name) else strings.get(arg.id)
            if text is not None:
                names.add(text)
    return names


def test_every_step_the_code_names_is_registered():
    sources = [*sorted((ROOT / "tasks").rglob("*.py")), *sorted((ROOT / "flows").rglob("*.py"))]
    named = {name: path.relative_to(ROOT) for path in sources for name in named_steps(path)}
    assert {"verify", "pack", "track", "open_late_case", "ship"} <= set(named)  # the scan works
    unknown = {name: str(path) for name, path in named.items() if name not in journey.BY_NAME}
    assert unknown == {}


def test_the_sweep_runs_the_registry_in_its_order():
    flows_journey = importlib.import_module("flows.journey")
    assert list(flows_journey.STAGES) == list(journey.NAMES)
    assert all(callable(stage) for stage in flows_journey.STAGES.values())


def test_every_delivery_step_has_a_delay_and_the_config_names_only_registered_steps():
    delivery = journey.steps_on(journey.Trigger.DELIVERY)
    assert delivery and all(spec.default_hours is not None for spec in delivery)
    assert all(spec.claims == (OrderState.DELIVERED,) for spec in delivery)
    configured = yaml.safe_load((ROOT / "configs" / "tracking.yaml").read_text())["after_delivery"]
    assert set(configured) <= {spec.name for spec in delivery}


def test_the_journal_follows_the_registry():
    assert journal.NEXT_STEP == {OrderState.VERIFIED: "pack", OrderState.PACKED: "confirm"}
    assert journal.STAGE_STATES == {"verify": OrderState.RECEIVED, "pack": OrderState.VERIFIED,
                                    "confirm": OrderState.PACKED}
    moved_into = {state for spec in journey.STEPS for state in spec.moves_to}
    assert set(journal.NEXT_STEP) <= moved_into


def test_a_mail_step_is_one_registry_entry(engine, runtime, now):
    """The generic stage: the template's mail to delivered orders with a product of the
    step's categories, once; the others' step closed."""
    from datetime import timedelta

    from sqlalchemy import select

    from tasks.store.db import session_scope
    from tasks.store.models import Message, Step
    from tests.factories import add_catalog, add_order

    spec = journey.mail_after_delivery("fit_check", 24, template="care_guide",
                                       categories=("apparel",))
    stage = journey.stage_of(spec)
    with session_scope(engine) as session:
        add_catalog(session, now)
        delivered = {"state": "delivered", "step": "fit_check",
                     "delivered_at": now - timedelta(days=2)}
        tee = add_order(session, now, lines=[("TEE-1", 1, "25.00")], **delivered)
        mug = add_order(session, now, lines=[("MUG-1", 1, "18.00")], **delivered)
        ids = [tee.id, mug.id]
    for _ in range(2):  # a rerun sends nothing twice
        with session_scope(engine) as session:
            result = stage(session, ids, now, runtime)
    with session_scope(engine) as session:
        mails = session.scalars(select(Message).where(Message.template == "care_guide")).all()
        steps = dict(session.execute(select(Step.order_id, Step.status)
                                     .where(Step.name == "fit_check")).all())
    assert [m.order_id for m in mails] == [tee.id]
    assert mails[0].effect_key == f"order:{tee.id}:fit_check:care_guide:v1"
    assert steps == {tee.id: "done", mug.id: "closed"}
    assert (result.stage, result.advanced, result.closed) == ("fit_check", 1, 1)
