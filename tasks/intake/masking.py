"""A quarantined record as operators may see it, and an operator's edit of it made whole again.

Prefect keeps what a form or an artifact shows, out of erasure's reach, so a record shown there
has its personal values masked: names, streets, phones and postcodes to each word's first
character (M••• O•••••), e-mail addresses to their domain (•••@example.com), notes and what a
customer typed on a line (engravings) wholly. The keys follow the columns marked personal in
tasks/store/models.py, as the store's files and webhooks spell them.

An operator fixes a record by editing the masked text. `unmask` puts back every value left as
it was shown, so only what the operator typed is new; a masked value edited only in part still
holds bullets and is refused (`MaskedValueEdited`): a changed value is typed whole.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from tasks.markdown import BULLET, EMAIL, mask_words

PERSONAL_KEYS = frozenset({
    "email", "contact_email", "customer_email", "first_name", "last_name", "phone", "address1",
    "address2", "zip", "company", "birthday", "note", "gift_note", "customer_note",
    "ship_name", "ship_address1", "ship_address2", "ship_zip", "ship_phone", "bill_name",
    "bill_address1", "bill_address2", "bill_zip", "bill_phone",
})
# An object holding any of these is a person or an address: its "name" is theirs too (an
# order holds an e-mail and a phone, and its "name" is its number).
PERSON_MARKERS = frozenset({"first_name", "last_name", "address1"})
# Lists of {name, value} the customer filled in: every value is masked, the labels are kept.
TYPED_BY_CUSTOMER = frozenset({"properties", "note_attributes"})
MIN_WORD = 3  # shorter words of a name are not searched for elsewhere in the record


class EditRefused(ValueError):
    """An edited record that cannot be made whole: not JSON any more, or a value half-edited."""


def mask_text(value: str) -> str:
    """`a.b@shop.com` → `•••@shop.com`; other text → each word's first character and bullets."""
    if EMAIL.fullmatch(value.strip()):
        return EMAIL.sub(rf"{BULLET * 3}@\1", value.strip())
    return mask_words(value)


def mask_record(raw: str, source: str | None = None) -> str:
    """The record with its personal values masked: JSON stays JSON (indented, to be read and
    edited), CSV stays CSV, anything else keeps its text with personal-looking values masked."""
    kind, parsed = _parse(raw, source)
    if kind == "json":
        return json.dumps(_Masker().record(parsed), indent=2, ensure_ascii=False)
    if kind == "csv":
        return _csv_text(_Masker().record(parsed))
    return _mask_loose_text(raw)


def unmask(edited: str, raw: str, source: str | None = None) -> str:
    """The operator's edit of `mask_record(raw)`, with every value left as shown restored.

    JSON comes back on one line (as JSON Lines readers take it). Raises EditRefused when the
    edit is no longer JSON though the record was, or when bullets remain that the original
    record did not have (a masked value changed only in part).
    """
    if edited.strip() == mask_record(raw, source).strip():
        return raw
    kind, original = _parse(raw, source)
    edited_kind, changed = _parse(edited, source)
    if kind == "json" and edited_kind != "json":
        raise EditRefused(f"the corrected record is not valid JSON ({changed})")
    if kind == edited_kind == "json":
        whole = json.dumps(_restore(changed, _Masker().record(original), original),
                           ensure_ascii=False)
    elif kind == edited_kind == "csv":
        whole = _csv_text(_restore(changed, _Masker().record(original), original))
    elif edited_kind == "json":
        whole = json.dumps(changed, ensure_ascii=False)
    else:
        whole = edited.strip()
    if _half_edited(whole, raw, source):
        raise EditRefused(f"a masked value ({BULLET}) was changed only in part: type the "
                          "whole value, or leave it exactly as shown to keep it")
    return whole


def _half_edited(whole: str, raw: str, source: str | None) -> bool:
    """Whether a value holds bullets that no value of the original record held."""
    if BULLET not in whole:
        return False
    kept = {leaf for leaf in _strings(raw, source) if BULLET in leaf}
    return any(BULLET in leaf and leaf not in kept for leaf in _strings(whole, source))


def _strings(text: str, source: str | None) -> list[str]:
    kind, parsed = _parse(text, source)
    return [text] if kind == "text" else _leaves(parsed)


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value] if isinstance(value, str) else []


HEADER = "\0header"  # a CSV row's column order, kept beside its values


def _parse(text: str, source: str | None) -> tuple[str, Any]:
    """("csv", rows) for a CSV source with a header and rows; ("json", value); else
    ("text", why it is not JSON)."""
    if source == "csv":
        rows = list(csv.reader(io.StringIO(text.strip())))
        if len(rows) >= 2:
            return "csv", [dict(zip(rows[0], row, strict=False)) | {HEADER: rows[0]}
                           for row in rows[1:]]
    try:
        return "json", json.loads(text)
    except ValueError as error:
        return "text", str(error)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    header = rows[0][HEADER] if rows else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[row.get(column, "") for column in header] for row in rows])
    return out.getvalue().strip()


class _Masker:
    """Masks personal values by key, then whatever else in the record repeats one of them."""

    def __init__(self) -> None:
        self.found: set[str] = set()

    def record(self, value: Any) -> Any:
        return self._elsewhere(self._walk(value, None, None))

    def _walk(self, value: Any, key: str | None, mode: str | None) -> Any:
        """mode: "personal" masks every value below; "typed" (what a customer filled in on a
        line) every value but its labels."""
        if isinstance(value, dict):
            is_person = bool(PERSON_MARKERS & value.keys())
            return {k: v if k == HEADER else self._walk(v, k, self._mode(k, mode, is_person))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(item, key, mode) for item in value]
        if mode == "personal" or (mode == "typed" and key != "name"):
            return self._mask(value)
        return value

    @staticmethod
    def _mode(key: str, mode: str | None, is_person: bool) -> str | None:
        if mode == "personal" or key in PERSONAL_KEYS or (key == "name" and is_person):
            return "personal"
        return "typed" if mode == "typed" or key in TYPED_BY_CUSTOMER else None

    def _mask(self, value: Any) -> Any:
        if isinstance(value, bool) or value is None or value == "":
            return value
        text = str(value)
        self.found.add(text)
        self.found.update(word for word in text.split() if len(word) >= MIN_WORD)
        return mask_text(text)

    def _elsewhere(self, value: Any) -> Any:
        """Addresses anywhere, and the personal values found, where other fields repeat them."""
        words = sorted(self.found, key=len, reverse=True)
        pattern = (re.compile(rf"(?<!\w)(?:{'|'.join(map(re.escape, words))})(?!\w)",
                              re.IGNORECASE) if words else None)

        def clean(item: Any) -> Any:
            if isinstance(item, dict):
                return {k: v if k == HEADER else clean(v) for k, v in item.items()}
            if isinstance(item, list):
                return [clean(v) for v in item]
            if not isinstance(item, str) or BULLET in item:
                return item
            item = EMAIL.sub(rf"{BULLET * 3}@\1", item)
            return pattern.sub(lambda m: mask_text(m.group(0)), item) if pattern else item

        return clean(value)


def _restore(edited: Any, masked: Any, original: Any) -> Any:
    """Edited values as typed, except where they equal what was shown: then the original."""
    if edited == masked:
        return original
    if isinstance(edited, dict) and isinstance(masked, dict) and isinstance(original, dict):
        return {k: _restore(v, masked[k], original[k]) if k in masked and k in original else v
                for k, v in edited.items()}
    if (isinstance(edited, list) and isinstance(masked, list) and isinstance(original, list)
            and len(masked) == len(original)):
        return [_restore(v, masked[i], original[i]) if i < len(masked) else v
                for i, v in enumerate(edited)]
    return edited


LOOSE_KEYS = "|".join(sorted(PERSONAL_KEYS | {"name"}))
LOOSE_PAIR = re.compile(rf'("(?:{LOOSE_KEYS})"\s*:\s*")((?:[^"\\]|\\.)*)(")')


def _mask_loose_text(raw: str) -> str:
    """A record that is not JSON (why it was refused): personal "key": "value" pairs and
    addresses masked where they can still be recognised."""
    masked = LOOSE_PAIR.sub(lambda m: m.group(1) + mask_text(m.group(2)) + m.group(3), raw)
    return EMAIL.sub(rf"{BULLET * 3}@\1", masked)
