"""Customer text made in Python (a notice, a status, a problem) in the reader's language.

The text is marked where it is written, `N_("Delivered")` (tasks/i18n.py), so `journeys i18n
extract` finds it (babel.cfg lists the modules); it is translated once the locale is known:
`say = speaker(cfg, locale)`, then `say(PROBLEM_WORDS[kind])` or
`say(N_("%(item)s: choose a number"), item=title)`. The catalog chain is the templates' (the
locale's, its language's, the store default's), so a page or mail never mixes two languages.

Words the store writes in its own configuration (a return reason's label, the return policy)
are said the same way, `say(reason.label)`: `extract_config_words` puts them in the catalogs
(babel.cfg names the files and keys), and a text the catalog does not know yet stays as written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml

from tasks.config import Config
from tasks.i18n import N_, available_languages, locales_dir, translate
from tasks.messaging.money import format_number, order_locale
from tasks.store.models import Customer

Key = TypeVar("Key")


@dataclass(frozen=True)
class Say:
    """Translates into one reader's locale: `say(msgid, **placeholders)`."""

    locales: Path
    locale: str
    default: str

    def __call__(self, message: str, **values: Any) -> str:
        return translate(self.locales, self.locale, self.default, message, **values)

    def number(self, number: int | Decimal) -> str:
        """A count as the reader writes it (1,000 · 1.000 · 1 000)."""
        return format_number(number, self.locale)

    def table(self, words: Mapping[Key, str]) -> dict[Key, str]:
        """A table of marked words (rating → label), each in the reader's language."""
        return {key: self(text) for key, text in words.items()}


def customer_locale(customer: Customer, cfg: Config) -> str:
    """The locale of a customer's mail or page with no order (birthday, win-back, tiers, the
    rewards page): theirs if we have its words, else the store's default. An order's is
    tasks/messaging/compose.locale_of."""
    return order_locale(None, customer.locale, cfg.store.default_locale,
                        available_languages(locales_dir(cfg.dir)))


def speaker(cfg: Config, locale: str) -> Say:
    """Python-made text in `locale` (words from the store default's catalog if it has none)."""
    return Say(locales_dir(cfg.dir), locale, cfg.store.default_locale)


def comment_too_long(say: Say, length: int, limit: int) -> str:
    """What a page form says about a comment over its limit (it is never cut silently)."""
    return say(N_("Your comment is %(length)s characters long; we can take up to %(limit)s. "
                  "Please shorten it and send it again."),
               length=say.number(length), limit=say.number(limit))


# ---------------------------------------------------------------- the store's own words


def extract_config_words(fileobj: IO[bytes], keywords: Any, comment_tags: Any,
                         options: Mapping[str, Any]) -> Iterator[tuple[int, str, str, list]]:
    """A babel extractor (babel.cfg) for customer text in a YAML config file: `keys` lists
    dotted paths, `*` standing for every key of a mapping ("reasons.*.label return_policy")."""
    data = yaml.safe_load(fileobj) or {}
    for path in str(options.get("keys", "")).split():
        for text in values_at(data, path.split(".")):
            if isinstance(text, str) and text.strip():
                yield 0, "N_", text, []


def values_at(data: Any, path: Sequence[str]) -> Iterator[Any]:
    """What a dotted path names in parsed YAML (nothing where it does not exist)."""
    if not path:
        yield data
        return
    if isinstance(data, Mapping):
        head, rest = path[0], path[1:]
        for key in (list(data) if head == "*" else [head]):
            if key in data:
                yield from values_at(data[key], rest)
