"""Markdown that shows customer text exactly as written: for Prefect artifacts (rendered as GFM
with HTML sanitised), where a lost ">" or "[0]" changes what a line means; and the masks for
personal text that operators and customers see (addresses to their domain, words to initials).

Used by flows/reporting.py (every artifact), tasks/returns/report.py, the order page and the
quarantine's masked records (tasks/intake/masking.py).
"""

from __future__ import annotations

import re
from typing import Any

EMAIL = re.compile(r"[^\s@'\"<>(),;:]+@([^\s@'\"<>(),;:]+)")
# What opens or closes inline Markdown, HTML, an entity or a table cell, wherever it stands.
INLINE_MARKUP = re.compile(r"[\\`*_~\[\]<&|]")
# GFM turns bare `www.x` and `scheme://x` into links: escaping that dot or colon stops it.
AUTOLINK = re.compile(r"(?i)(?<=\bwww)\.|:(?=//)")
# A heading, quote, list or rule starts only at the beginning of a line (or list item).
BLOCK_START = re.compile(r"^([#>+=-])|^(\d+)([.)])")
CELL_LIMIT = 120
BULLET = "•"


def mask_emails(text: str) -> str:
    """Operators see that an address was involved, not whose: a.b@shop.com → ***@shop.com."""
    return EMAIL.sub(r"***@\1", text)


def mask_words(text: str, only_with_digits: bool = False) -> str:
    """Each word to its first character and bullets (`Ada` → `A••`; a one-character word is
    hidden whole); with `only_with_digits`, only words holding a digit (a street keeps its name,
    not its house number: `412 Alder St` → `4•• Alder St`)."""
    return " ".join(word if only_with_digits and not any(c.isdigit() for c in word)
                    else BULLET if len(word) == 1
                    else word[:1] + BULLET * (len(word) - 1) for word in text.split())


def md_text(value: Any, limit: int | None = None) -> str:
    """Text as Markdown that renders exactly as written, on one line, with addresses masked.

    CommonMark's backslash escape goes before each ASCII punctuation character that could make
    markup: everywhere for \\ ` * _ ~ [ ] < & | (so `[x](javascript:…)`, `![i](…)` and `<script>`
    are text), the dot of `www.` and the colon of `://` (no bare-URL links), and a line-starting
    # > + = - or `1.`. Other punctuation stays bare, so `4706.00 USD > 2500` and masked
    `***@shop-1.example` read (and search, and scan) as they were written. Line breaks become
    one space (a table row is one line); text longer than `limit` is cut with "…".
    """
    text = " ".join(mask_emails(str(value)).split())
    if limit is not None and len(text) > limit:
        text = text[:limit - 1] + "…"
    text = AUTOLINK.sub(r"\\\g<0>", INLINE_MARKUP.sub(r"\\\g<0>", text))
    return BLOCK_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", text)


def md_cell(value: Any) -> str:
    """One table cell of customer-influenced text (at most 120 characters)."""
    return md_text(value, CELL_LIMIT)
