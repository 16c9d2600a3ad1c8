"""Erasure's database scrub, derived from the personal-data marks on the models.

A column holding personal data carries ``info={"personal": KIND, "erase": HOW}``
(tasks/store/models.py). The scrub walks every table with marked columns, finds the erased
customer's rows through the foreign keys that lead to the customer or their orders, and
replaces each marked value as HOW says (``SCRUBBERS``). A new table with a marked column and a
foreign key to ``customers`` or ``orders`` (or to a table that has one) is erased with nothing
else to edit; one with no such path makes the plan fail loudly (``ErasurePlanError``).

Three tables need more than their marks, each an explicit hook in ``HOOKS``: the outbox
(also found by recipient, locked against a dispatcher, and unsent mail is cancelled),
quarantine (raw records have no key to the customer: found by the address inside them, and an
open entry can no longer be released) and the customer row itself (consent withdrawn, the
change dated).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Column, MetaData, Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from tasks.states import MessageStatus
from tasks.store.db import is_postgres
from tasks.store.models import Base

ERASED_NAME = "Erased"
PLACEHOLDER = "[erased]"
ERASURE_NOTE = "[erased: this record held personal data of a customer erased on request]"
KEPT_ADDRESS_FIELDS = ("country_code", "province_code")
KINDS = frozenset({"email", "name", "address", "phone", "birthday", "identifier", "free_text"})
KEPT = "kept"  # personal, and not erased (see the column's comment for why)
CANCELLED = MessageStatus.CANCELLED
CANCEL_REASON = "cancelled: customer erased"
# Mail not sent yet: pending, or claimed by a dispatcher (`sending`; a dispatcher mid-send
# finds it cancelled and leaves it so; one whose lease ran out would have sent it again).
UNSENT = (MessageStatus.PENDING, MessageStatus.SENDING)


class ErasurePlanError(Exception):
    """The marks cannot be turned into a scrub: unknown vocabulary, or an unreachable table."""


@dataclass(frozen=True)
class Target:
    """The customer being erased: who they were (in memory only) and what they become."""

    customer_id: int
    address: str
    pseudonym: str
    order_ids: list[int]
    redactor: Redactor
    now: datetime


def pseudonym_for(customer_id: int) -> str:
    """Stable, unique, undeliverable (RFC 2606 `.invalid`) and reveals nothing of the address."""
    return f"erased-{customer_id}@invalid"


class Redactor:
    """Replaces the customer's own strings (e-mail, names, street, phone) inside text or JSON."""

    def __init__(self, strings: Iterable[str], address: str, pseudonym: str) -> None:
        self.replacement = {s.lower(): PLACEHOLDER for s in strings if len(s) >= 2}
        self.replacement[address] = pseudonym
        alternatives = "|".join(map(re.escape, sorted(self.replacement, key=len, reverse=True)))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def text(self, value: str | None) -> str | None:
        if not value:
            return value
        # .get: a case-insensitive match may lower-case differently (e.g. a dotted capital I)
        return self.pattern.sub(
            lambda m: self.replacement.get(m.group(0).lower(), PLACEHOLDER), value
        )

    def walk(self, value: Any) -> Any:
        """The same JSON value with every string (keys too) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        return value


# --- how a marked value is scrubbed (the "erase" vocabulary) ---------------------------------


def anonymous_address(address: dict[str, Any] | None, target: Target) -> dict[str, Any]:
    """Country and province only (tax and statistics), and a name that says what happened."""
    if not address:
        return {}
    kept = {k: address[k] for k in KEPT_ADDRESS_FIELDS if address.get(k)}
    return {"name": ERASED_NAME, **kept}


def redacted_packing(packing: dict[str, Any] | None, target: Target) -> dict[str, Any] | None:
    """The plan's text redacted; its document refs kept as they are (the archive step's job)."""
    if not packing:
        return packing
    documents = packing.get("documents")
    plan = target.redactor.walk({k: v for k, v in packing.items() if k != "documents"})
    return plan if documents is None else {**plan, "documents": documents}


Scrubber = Callable[[Any, Target], Any]
SCRUBBERS: dict[str, Scrubber] = {
    "pseudonym": lambda value, target: target.pseudonym,  # an address: stable, undeliverable
    "null": lambda value, target: None,
    "empty": lambda value, target: [],  # a JSON list column that may not be NULL
    "erased_name": lambda value, target: ERASED_NAME,  # a name the templates can still show
    "placeholder": lambda value, target: PLACEHOLDER if value else value,
    "mask_values": lambda value, target: dict.fromkeys(value or {}, PLACEHOLDER),  # keys stay
    "redact": lambda value, target: target.redactor.walk(value),  # the customer's strings
    "erased_marker": lambda value, target: {"erased": True},  # a render context
    "erasure_note": lambda value, target: ERASURE_NOTE,  # a whole raw record
    "keep_region": anonymous_address,
    "redact_keep_documents": redacted_packing,
}


def marks(table: Table) -> dict[str, tuple[str, str]]:
    """column name → (kind, how) of every personal column; unknown vocabulary fails."""
    found = {}
    for column in table.columns:
        if "personal" not in column.info:
            continue
        kind, how = column.info["personal"], column.info.get("erase")
        if kind not in KINDS or (how not in SCRUBBERS and how != KEPT):
            raise ErasurePlanError(f"{table.name}.{column.name}: unknown mark {column.info}")
        found[column.name] = (kind, how)
    return found


def erasure_plan(metadata: MetaData = Base.metadata) -> dict[str, dict[str, str]]:
    """table → column → how, for every table with a column to scrub, in dependency order."""
    plan = {}
    for table in metadata.sorted_tables:
        scrubbed = {name: how for name, (_, how) in marks(table).items() if how != KEPT}
        if scrubbed:
            plan[table.name] = scrubbed
    return plan


# --- finding the customer's rows ------------------------------------------------------------


def roots(target: Target) -> dict[str, list[int]]:
    """The rows erasure starts from: the customer and their orders (by customer or e-mail)."""
    return {"customers": [target.customer_id], "orders": target.order_ids}


def reach(table: Table, start: dict[str, list[int]], seen: frozenset[str] = frozenset()
          ) -> Any | None:
    """WHERE clause for the rows of `table` that lead to a start row by foreign keys."""
    if table.name in start:
        return table.c.id.in_(start[table.name])
    clauses = []
    for key in sorted(table.foreign_keys, key=lambda k: k.parent.name):
        referred = key.column.table
        if referred.name in seen | {table.name}:
            continue
        if referred.name in start and key.column.name == "id":
            clauses.append(key.parent.in_(start[referred.name]))
        elif (inner := reach(referred, start, seen | {table.name})) is not None:
            clauses.append(key.parent.in_(select(key.column).where(inner)))
    return or_(*clauses) if clauses else None


# --- the hooks: what a table needs beyond its marks ------------------------------------------


@dataclass(frozen=True)
class Hook:
    """A table's special treatment; `why` keeps the reason next to the hook."""

    why: str
    reach: Callable[[Table, Target], Any] | None = None  # OR-ed with the foreign-key reach
    replace_reach: bool = False  # the hook's reach is the only one
    read: tuple[str, ...] = ()  # further columns `adjust` reads
    adjust: Callable[[Any, dict[str, Any], Target], dict[str, Any]] | None = None
    lock: bool = False  # SELECT ... FOR UPDATE on PostgreSQL


def cancel_unsent(row: Any, values: dict[str, Any], target: Target) -> dict[str, Any]:
    unsent = row.status in UNSENT
    return {**values, "status": CANCELLED if unsent else row.status,
            "reason": CANCEL_REASON if unsent else values["reason"]}


def close_open_entry(row: Any, values: dict[str, Any], target: Target) -> dict[str, Any]:
    return {**values, "status": "erased" if row.status == "open" else row.status}


def withdraw_consent(row: Any, values: dict[str, Any], target: Target) -> dict[str, Any]:
    return {**values, "accepts_marketing": False, "updated_at": target.now}


HOOKS: dict[str, Hook] = {
    "messages": Hook(
        "mail may be addressed to the customer without a key to them; a dispatcher may hold "
        "a row (the lock waits for it); unsent mail is cancelled, not scrubbed and sent",
        reach=lambda table, t: func.lower(table.c.to_addr) == t.address,
        read=("status",), adjust=cancel_unsent, lock=True),
    "quarantine": Hook(
        "a raw record has no key to the customer: found by the address inside it; an open "
        "entry can no longer be released (intake/release.py reads `erased`)",
        reach=lambda table, t: func.lower(table.c.payload).contains(t.address, autoescape=True),
        replace_reach=True, read=("status",), adjust=close_open_entry),
    "customers": Hook(
        "the row stays (the ledger refers to it); consent is withdrawn and the change dated",
        read=("accepts_marketing", "updated_at"), adjust=withdraw_consent),
}


# --- the scrub ------------------------------------------------------------------------------


@dataclass
class Scrubbed:
    """One table's rows of the customer as they were read, and how many changed."""

    rows: list[Any] = field(default_factory=list)
    changed: int = 0


def scrub_customer_data(session: Session, target: Target, metadata: MetaData = Base.metadata
                        ) -> dict[str, Scrubbed]:
    """Scrub every marked column of the customer's rows; table name → what was scrubbed.

    The outbox goes first: its lock waits for a dispatcher holding one of the customer's mails.
    """
    plan = erasure_plan(metadata)
    order = sorted(plan, key=lambda name: name != "messages")
    return {name: scrub_table(session, metadata.tables[name], plan[name], target)
            for name in order}


def where_of(table: Table, target: Target) -> Any:
    hook = HOOKS.get(table.name)
    derived = None if hook and hook.replace_reach else reach(table, roots(target))
    extra = hook.reach(table, target) if hook and hook.reach else None
    clauses = [c for c in (derived, extra) if c is not None]
    if not clauses:
        raise ErasurePlanError(f"{table.name} holds personal data but no foreign key leads to "
                               "customers or orders: add one, or a hook in privacy_scrub.HOOKS")
    return or_(*clauses)


def scrub_table(session: Session, table: Table, columns: dict[str, str], target: Target
                ) -> Scrubbed:
    """Read the customer's rows, scrub the marked columns, write the rows that changed."""
    hook = HOOKS.get(table.name)
    read: list[Column[Any]] = [table.c[name] for name in (*columns, *(hook.read if hook else ()))]
    query = select(table.c.id, *read).where(where_of(table, target)).order_by(table.c.id)
    if hook and hook.lock and is_postgres(session):
        query = query.with_for_update()
    rows = session.execute(query).all()
    changed = []
    for row in rows:
        values = {name: SCRUBBERS[how](getattr(row, name), target)
                  for name, how in columns.items()}
        if hook and hook.adjust:
            values = hook.adjust(row, values, target)
        if any(value != getattr(row, name) for name, value in values.items()):
            changed.append({"id": row.id, **values})
    update_rows(session, table, changed)
    return Scrubbed(list(rows), len(changed))


def update_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany UPDATE by id; each row is {"id": ..., column: value, ...}."""
    if not rows:
        return
    columns = [name for name in rows[0] if name != "id"]
    statement = update(table).where(table.c.id == bindparam("b_id")).values(
        {name: bindparam(f"b_{name}") for name in columns}
    )
    session.connection().execute(
        statement, [{f"b_{name}": value for name, value in row.items()} for row in rows]
    )
