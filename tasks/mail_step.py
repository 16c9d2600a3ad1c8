"""The generic "send this template" stage: a time-based mail step without code of its own.

A registry entry in tasks/journey.py with `template=` (and, to narrow who gets it, `categories=`)
runs this stage: each delivered, not cancelled order of the batch gets the template's mail once
(keyed order:{id}:{step}:{template}:v{n}), with the shared order context (tasks/messaging/
compose.base_context), its lines, and what the entry's `context` function adds (its links,
say: tasks/aftercare/fit.py). An order whose products match none of `categories` has its
step closed; one not delivered (or cancelled, or gone) too; one a peer has locked stays pending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.journey import Stage, StageResult, StepSpec, resolve
from tasks.messaging.compose import base_context, line_context, order_mail
from tasks.messaging.outbox import enqueue
from tasks.states import OrderState, StepStatus
from tasks.store.journal import set_steps
from tasks.store.loaders import delivered_orders, products_of
from tasks.store.models import Order, OrderLine, Product

if TYPE_CHECKING:
    from tasks.runtime import Runtime

NOT_DELIVERED = "not delivered"
NOT_FOR_THESE = "no product of the step's categories"


def send_template(spec: StepSpec) -> Stage:
    """The stage for registry entry `spec` (its `template`, optionally its `categories`)."""

    def stage(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime
              ) -> StageResult:
        orders = delivered_orders(session, order_ids)
        products = products_of(session, orders)
        chosen = choose(spec, orders, products)
        enqueue(session, [template_mail(spec, o, products, rt, now) for o in chosen], now)
        outcomes = {o.id: (StepStatus.DONE, None) for o in chosen}
        outcomes |= {o.id: (StepStatus.CLOSED, NOT_FOR_THESE) for o in orders if o.id
                     not in outcomes}
        gone = not_deliverable(session, set(order_ids) - {o.id for o in orders})
        outcomes |= {oid: (StepStatus.CLOSED, NOT_DELIVERED) for oid in gone}
        set_steps(session, spec.name, outcomes, now)
        return StageResult(stage=spec.name, advanced=len(chosen),
                           closed=len(outcomes) - len(chosen),
                           skipped=len(set(order_ids)) - len(outcomes),
                           details={"messages_enqueued": len(chosen)})

    stage.__name__ = stage.__qualname__ = spec.name
    return stage


def choose(spec: StepSpec, orders: list[Order], products: Mapping[str, Product]) -> list[Order]:
    """The orders with a product of the step's categories (every order when it names none)."""
    if not spec.categories:
        return orders
    return [o for o in orders if in_categories(o, products, spec.categories)]


def in_categories(order: Order, products: Mapping[str, Product], categories: Sequence[str]
                  ) -> list[OrderLine]:
    """The order's lines whose product is in one of `categories`."""
    return [li for li in order.lines
            if li.sku in products and products[li.sku].category in categories]


def template_mail(spec: StepSpec, order: Order, products: Mapping[str, Product], rt: Runtime,
                  now: datetime) -> dict[str, Any]:
    """The step's mail for one order: the shared order context, its lines, the step's own."""
    cfg = rt.config
    context = base_context(order, cfg) | {"lines": [line_context(li) for li in order.lines]}
    if spec.context:
        context |= resolve(spec.context)(spec, order, products, rt, now)
    return order_mail(cfg, order, spec.name, spec.template or spec.name, context, now)


def not_deliverable(session: Session, order_ids: set[int]) -> set[int]:
    """Of these orders (not claimed), those not delivered, cancelled or gone: not merely locked."""
    if not order_ids:
        return set()
    live = select(Order.id).where(Order.id.in_(order_ids), Order.delivered_at.is_not(None),
                                  Order.state != OrderState.CANCELLED)
    return order_ids - set(session.scalars(live))
