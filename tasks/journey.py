"""The journey, declared once: the stage contract and every step, in journey order.

A step is a row (order, name, due time); each sweep runs whatever is due, stage by stage, in
the order of `STEPS`. Each entry says which stage function runs the step, which order state(s)
it claims, what schedules it (and after which delay) and where it moves the order. Everything
that schedules or moves a step reads this registry: flows/journey.py (the sweep's stage order),
tasks/store/journal.py (what follows a state change), tasks/tracking/stage.py (what delivery and
a missed promise schedule) and tasks/tracking/ingest.py (shipping).

This module imports no stage: stage functions are named by dotted path and resolved on first
use, so any module may import the registry without an import circle.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from tasks.states import OrderState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tasks.runtime import Runtime


@dataclass
class StageResult:
    """Counts a stage reports for one batch; the flow adds them up per run."""

    stage: str
    received: int = 0  # set by the caller from the ids it passed, not by the stage itself
    advanced: int = 0
    held: int = 0
    closed: int = 0
    skipped: int = 0
    quarantined: int = 0
    details: dict[str, int] = field(default_factory=dict)

    def add(self, other: StageResult) -> None:
        for name in ("received", "advanced", "held", "closed", "skipped", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.details.items():
            self.details[key] = self.details.get(key, 0) + value


class Stage(Protocol):
    """What every stage is: one batch of due orders, in the caller's transaction.

    A stage claims the orders still in its state, decides, applies (moves orders, closes its
    step, schedules what follows, queues mail) and reports counts. It never commits and never
    reads the clock: `now` is the business time of the whole run.
    """

    def __call__(
        self, session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
    ) -> StageResult: ...


class Trigger(StrEnum):
    """What schedules a step (a row in `steps`)."""

    INTAKE = "on intake"  # a new order; a released hold reopens it (tasks/intake, tasks/verify)
    MOVED = "when the order reaches the state it claims"  # journal.apply_transitions
    SHIPMENT = "on shipment ingest"  # tasks/tracking/ingest.py, run at once in that transaction
    TRACKING = "on tracking event, and when the promise runs out"  # tasks/tracking
    DELIVERY = "on delivery"  # tasks/tracking/stage.mark_delivered, with its delay
    LATE = "on a missed promise"  # tasks/tracking/stage.track, late_case_after_days later
    LOYALTY_EARN = "after loyalty earn"  # tasks/loyalty.earn, at delivered_at + return window
    # tasks/confirm.py (tasks/tracking/unshipped.watch_shipping): due when the ship-by day ends
    SHIP_BY = "on confirmation, when the promised ship date has passed"


CLOSED_ORDER_STATES = (OrderState.ON_HOLD, OrderState.CANCELLED)


@dataclass(frozen=True)
class StepSpec:
    """One step of the journey.

    `delay`: where its delay is configured ("section.key[name]"), with `default_hours` when the
    config leaves it out. `template`: set for a plain time-based mail step, whose `stage` is
    then MAIL_STAGE (tasks/mail_step.py: the template's mail to each delivered order, only to
    orders with a product of `categories` when given). `context`: "module:function" adding the
    step's own context to that mail (called with the spec, order, products by SKU, rt, now).
    """

    name: str
    stage: str  # "module:function", resolved lazily
    claims: tuple[OrderState, ...]
    trigger: Trigger
    moves_to: tuple[OrderState, ...] = ()
    delay: str | None = None
    default_hours: float | None = None
    template: str | None = None
    categories: tuple[str, ...] = ()
    context: str | None = None

    def stage_fn(self) -> Stage:
        return stage_of(self)


DELIVERY_DELAYS = "tracking.after_delivery"
DELIVERED = (OrderState.DELIVERED,)


MAIL_STAGE = "tasks.mail_step:send_template"


def after_delivery(name: str, stage: str, hours: float) -> StepSpec:
    """A step scheduled `hours` after delivery (configurable in tracking.yaml after_delivery)."""
    return StepSpec(name, stage, DELIVERED, Trigger.DELIVERY, delay=f"{DELIVERY_DELAYS}[{name}]",
                    default_hours=hours)


def mail_after_delivery(
    name: str, hours: float, template: str | None = None, categories: tuple[str, ...] = (),
    context: str | None = None,
) -> StepSpec:
    """A time-based mail step: `template` (default: the step's name) `hours` after delivery."""
    return StepSpec(name, MAIL_STAGE, DELIVERED, Trigger.DELIVERY,
                    delay=f"{DELIVERY_DELAYS}[{name}]", default_hours=hours,
                    template=template or name, categories=categories, context=context)


STEPS: tuple[StepSpec, ...] = (
    StepSpec("verify", "tasks.verify:verify", (OrderState.RECEIVED,), Trigger.INTAKE,
             moves_to=(OrderState.VERIFIED, *CLOSED_ORDER_STATES)),
    StepSpec("pack", "tasks.pack:pack", (OrderState.VERIFIED,), Trigger.MOVED,
             moves_to=(OrderState.PACKED, *CLOSED_ORDER_STATES)),
    StepSpec("confirm", "tasks.confirm:confirm", (OrderState.PACKED,), Trigger.MOVED,
             # delivered at once when there is nothing to ship (then the delivery steps follow)
             moves_to=(OrderState.CONFIRMED, OrderState.DELIVERED)),
    StepSpec("ship", "tasks.tracking.ship:ship", (OrderState.CONFIRMED,), Trigger.SHIPMENT,
             moves_to=(OrderState.SHIPPED,)),
    # A confirmed order still without a parcel once its ship-by day is over: apology, case.
    StepSpec("ship_overdue", "tasks.tracking.unshipped:ship_overdue", (OrderState.CONFIRMED,),
             Trigger.SHIP_BY, delay="tracking.ship_overdue_grace_hours"),
    StepSpec("track", "tasks.tracking.stage:track", (OrderState.SHIPPED,), Trigger.TRACKING,
             moves_to=(OrderState.DELIVERED,)),
    StepSpec("open_late_case", "tasks.tracking.stage:late_cases", (OrderState.SHIPPED,),
             Trigger.LATE, delay="tracking.late_case_after_days"),
    after_delivery("loyalty_earn", "tasks.loyalty:earn", 0.0),
    StepSpec("loyalty_approve", "tasks.loyalty:approve", DELIVERED, Trigger.LOYALTY_EARN,
             delay="loyalty.return_window_days"),
    after_delivery("feedback_request", "tasks.aftercare.feedback:feedback_request", 48.0),
    after_delivery("review_request", "tasks.aftercare.reviews:review_request", 168.0),
    after_delivery("care_guide", "tasks.aftercare.followups:care_guide", 72.0),
    # "How does it fit?" for apparel: a plain mail step; answers come back through the survey
    # page (/f/{token}/fit) into the feedback table, like the delivery survey's.
    mail_after_delivery("fit_survey", 240.0, categories=("apparel",),
                        context="tasks.aftercare.fit:fit_context"),
    after_delivery("cross_sell", "tasks.aftercare.followups:cross_sell", 336.0),
    # replenishment computes its own due time when it runs (it reschedules itself)
    after_delivery("replenishment", "tasks.aftercare.followups:replenishment", 0.0),
)

BY_NAME: dict[str, StepSpec] = {spec.name: spec for spec in STEPS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def step(name: str) -> StepSpec:
    return BY_NAME[name]


def resolve(path: str) -> Any:
    """The function named "module:function"."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@cache
def stage_of(spec: StepSpec) -> Stage:
    """The step's stage function; a mail step's is the generic stage made for it."""
    found = resolve(spec.stage)
    return found(spec) if spec.template else found


def stages() -> dict[str, Stage]:
    """Step name → stage function, in journey order (what a sweep runs)."""
    return {spec.name: spec.stage_fn() for spec in STEPS}


def steps_on(trigger: Trigger) -> tuple[StepSpec, ...]:
    """The steps a trigger schedules, in journey order."""
    return tuple(spec for spec in STEPS if spec.trigger == trigger)


def next_steps() -> dict[str, str]:
    """Order state → the step scheduled (due now) when a stage moves an order into it."""
    return {claimed: spec.name for spec in steps_on(Trigger.MOVED) for claimed in spec.claims}


def first_half() -> dict[str, str]:
    """Step → the single state it claims, for the steps a state change schedules (and verify)."""
    return {spec.name: spec.claims[0] for spec in STEPS
            if spec.trigger in (Trigger.INTAKE, Trigger.MOVED)}


def waiting_steps() -> dict[str, str]:
    """Order state before shipping → the step the order waits on there (a held order's verify
    step is held until an operator decides; tasks/verify.py releases it)."""
    before_shipping = (Trigger.INTAKE, Trigger.MOVED, Trigger.SHIPMENT)
    waiting = {claimed: spec.name for spec in STEPS if spec.trigger in before_shipping
               for claimed in spec.claims}
    return waiting | {OrderState.ON_HOLD: "verify"}


def delivery_delays() -> dict[str, float]:
    """Each "on delivery" step's default delay in hours (tracking.yaml after_delivery)."""
    return {spec.name: spec.default_hours or 0.0 for spec in steps_on(Trigger.DELIVERY)}

