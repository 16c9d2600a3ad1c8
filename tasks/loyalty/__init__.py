"""Loyalty: an append-only points ledger fed by delivered orders, approvals and refunds.

Every entry has a unique source key, so each stage can run any number of times:

- ``order:{id}:earn``            pending points for a delivered order (stage `loyalty_earn`)
- ``order:{id}:approve:release`` / ``order:{id}:approve``  the order's remaining pending points
                                  leave pending (-N) and become approved (+N) once the return
                                  window has closed (stage `loyalty_approve`)
- ``order:{id}:reverse:{key}``   a refund's exact share of what the order earned, taken from
                                  pending while the earn is pending, else from approved

Decisions (configs/loyalty.yaml can change the first two):
- Points are earned by every delivered order, enrolled or not, so a customer who joins later
  finds them (`earn_before_enrollment`). Balances report them for everyone; showing them only
  to members is the UI's job.
- After a delivered order, a customer who accepts marketing is enrolled automatically
  (`auto_enroll_with_consent`); with auto-enrolment off, a consenting customer gets one
  `loyalty_invite` (keyed per customer). A customer without consent is never invited: the
  invite is marketing mail, and queuing a mail the governor must drop is noise.
- A refund's points are proportional to the cumulative refunded amount over the order's eligible
  value, computed from the points the earn entry recorded (so its rule version, never today's
  rule); rounding is cumulative, so the reversals of an order add up to at most what it earned
  and to exactly that once the refunds reach the eligible value.

Modules: `rules` (what an order is worth: eligible value, the rule in force, refund shares),
`ledger` (vocabulary, source keys, appends, balances, liability), `earning` and `approval` (the
two stages), `reversal` (refunds), `tiers` (rolling spend, tier changes and their mail).
"""

from __future__ import annotations

from tasks.config.loyalty import EarningRule, LoyaltyConfig, Tier
from tasks.loyalty.approval import approve
from tasks.loyalty.earning import NOT_EARNING_STATUSES, earn, enroll
from tasks.loyalty.ledger import (
    APPROVE,
    APPROVE_STEP,
    APPROVED,
    EARN,
    EARN_STEP,
    PENDING,
    REVERSE,
    balances,
    customers_with_points,
    liability,
)
from tasks.loyalty.reversal import Refund, reverse_refunds
from tasks.loyalty.rules import loyalty_config
from tasks.loyalty.tiers import rolling_spend, update_tiers

__all__ = [
    "APPROVE", "APPROVED", "APPROVE_STEP", "EARN", "EARN_STEP", "NOT_EARNING_STATUSES", "PENDING",
    "REVERSE", "EarningRule", "LoyaltyConfig", "Refund", "Tier", "approve", "balances",
    "customers_with_points", "earn", "enroll", "liability", "loyalty_config", "reverse_refunds",
    "rolling_spend", "update_tiers",
]
