"""Translations for every template that a customer or an operator reads.

Templates use Jinja's i18n extension in its "newstyle" form: `{{ _("Your order %(number)s",
number=order.number) }}` and `{% trans %}…{% endtrans %}`. The words come from gettext
catalogs, `<config dir>/locales/<language>/LC_MESSAGES/journeys.po`, compiled to `.mo` files at
install (`journeys i18n compile`; infra/dev.py runs it). A `.po` newer than its `.mo` (or with
none) is compiled in memory when it is loaded, so an edited catalog is never silently ignored.

Which catalog: the locale's own (de_AT), then its language's (de), else the store default's;
a message missing from the chosen catalog stays in English (the templates' own words).

A render picks its language by adding the catalog's gettext functions to the render context
(`gettext_names`): Jinja looks `gettext`/`ngettext` up in the context before the environment's
globals, so the process-wide environments are never changed per render and renders in threads
never see each other's language.

Maintenance (the `journeys i18n` commands): `extract` the marked text into journeys.pot
(babel.cfg says where), `update` each catalog from it, `compile` them, and `check` that the
languages we promise are complete and that every translation keeps its placeholders.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po
from babel.support import NullTranslations, Translations
from jinja2 import Environment
from jinja2.ext import (  # the wrappers Environment.install_gettext_translations uses
    _make_new_gettext,
    _make_new_ngettext,
    _make_new_npgettext,
    _make_new_pgettext,
)

DOMAIN = "journeys"
SOURCE_LANGUAGE = "en"  # the templates are written in English: it never needs a catalog
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where babel.cfg is
log = logging.getLogger("journeys.i18n")


def enable_i18n(env: Environment) -> Environment:
    """Add the i18n extension with untranslated (English) text as the default."""
    env.add_extension("jinja2.ext.i18n")
    env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    return env


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark, translate later"
    """Marks text for extraction that is translated later, where the reader's locale is known."""
    return message


# ---------------------------------------------------------------- finding catalogs


def locales_dir(config_dir: Path) -> Path:
    return Path(config_dir) / "locales"


def po_file(locales: Path, language: str) -> Path:
    return locales / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@lru_cache(maxsize=16)
def available_languages(locales: Path) -> frozenset[str]:
    """The catalogs there are (`de`, `fr`, `pt_BR`), and English, which needs none."""
    found = {path.parent.parent.name for path in Path(locales).glob(f"*/LC_MESSAGES/{DOMAIN}.po")}
    return frozenset(found | {SOURCE_LANGUAGE})


def parsed_locale(locale: str | None) -> Locale | None:
    """A babel Locale for `de_DE`, `de-DE` or `de`; None for anything babel does not know."""
    try:
        return Locale.parse((locale or "").replace("-", "_")) if locale else None
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def catalog_names(locale: str | None) -> list[str]:
    """The catalogs that could serve a locale, most specific first: de_AT → [de_AT, de]."""
    parsed = parsed_locale(locale)
    if parsed is None:
        return []
    names = [str(parsed), parsed.language]
    if parsed.territory and parsed.script:  # zh_Hant_TW → zh_Hant_TW, zh_TW, zh
        names.insert(1, f"{parsed.language}_{parsed.territory}")
    return list(dict.fromkeys(names))


def speaks(locale: str, languages: Collection[str]) -> bool:
    """Whether one of `languages` (catalog names) can serve `locale`."""
    return any(name in languages for name in catalog_names(locale))


# ---------------------------------------------------------------- loading catalogs


def compiled_po(po: Path) -> bytes:
    """The `.mo` bytes of a `.po` file (fuzzy entries left out, as msgfmt does)."""
    with po.open("rb") as source:
        catalog = read_po(source, locale=po.parent.parent.name, domain=DOMAIN)
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


def is_stale(po: Path) -> bool:
    mo = po.with_suffix(".mo")
    return not mo.exists() or mo.stat().st_mtime < po.stat().st_mtime


def load_catalog(po: Path) -> Translations:
    """The compiled catalog; compiled here, in memory, when its `.mo` is missing or older."""
    if is_stale(po):
        log.warning("%s has no up-to-date .mo: compiled in memory (run `journeys i18n "
                    "compile`)", po)
        return Translations(io.BytesIO(compiled_po(po)), domain=DOMAIN)
    with po.with_suffix(".mo").open("rb") as mo:
        return Translations(mo, domain=DOMAIN)


@lru_cache(maxsize=64)
def translations(locales: Path, locale: str | None, default: str | None) -> NullTranslations:
    """The catalog chain for `locale`, else for the store's `default`; English if neither has
    one. Cached per process, like the parsed templates."""
    there = available_languages(locales)
    for wanted in (locale, default):
        names = [n for n in catalog_names(wanted) if n in there and po_file(locales, n).exists()]
        if names:
            first, *rest = (load_catalog(po_file(locales, name)) for name in names)
            for fallback in rest:  # de_AT's catalog need only hold what differs from de's
                first.add_fallback(fallback)
            return first
        if wanted and speaks(wanted, there):  # English: the templates' own words
            return NullTranslations()
    return NullTranslations()


@lru_cache(maxsize=64)
def gettext_names(locales: Path, locale: str | None, default: str | None) -> Mapping[str, Any]:
    """What a render context needs to speak `locale`: Jinja's newstyle gettext functions."""
    chosen = translations(locales, locale, default)
    return MappingProxyType({
        "gettext": _make_new_gettext(chosen.gettext),
        "ngettext": _make_new_ngettext(chosen.ngettext),
        "pgettext": _make_new_pgettext(chosen.pgettext),
        "npgettext": _make_new_npgettext(chosen.npgettext),
    })


def translate(locales: Path, locale: str | None, default: str | None, message: str,
              **values: Any) -> str:
    """Python-side text (a page title) in `locale`: `message` is its msgid, `values` fill its
    `%(name)s` placeholders after translation."""
    text = translations(locales, locale, default).gettext(message)
    return text % values if values else text


# ---------------------------------------------------------------- Accept-Language


_LANGUAGE_RANGE = re.compile(r"^\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*)\s*(?:;\s*q=([0-9.]+))?")


def preferred_locales(accept_language: str | None) -> list[str]:
    """An Accept-Language header's languages, most wanted first (`*` and q=0 left out)."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "")[:500].split(",")):
        match = _LANGUAGE_RANGE.match(part)
        if not match:
            continue
        try:
            quality = float(match.group(2)) if match.group(2) else 1.0
        except ValueError:
            continue
        if quality > 0:
            ranked.append((-quality, position, match.group(1)))
    return [tag for _, _, tag in sorted(ranked)]


def accepted_locale(accept_language: str | None, languages: Collection[str]) -> str | None:
    """The first locale the reader accepts that one of `languages` can serve (fr-CH → fr_CH)."""
    for tag in preferred_locales(accept_language):
        parsed = parsed_locale(tag)
        if parsed is not None and speaks(str(parsed), languages):
            return str(parsed)
    return None


# ---------------------------------------------------------------- maintenance


# Languages promised complete, and for which text: en and de everything; fr and es what a
# customer reads (the mail and its subjects, the pages), not the documents.
CUSTOMER_SOURCES = ("configs/templates/email/", "configs/messaging.yaml",
                    "configs/templates/pages/", "flows/pages/", "tasks/storefront/",
                    "tasks/returns/notices.py", "tasks/aftercare/feedback.py",
                    "tasks/aftercare/fit.py", "configs/returns.yaml", "configs/store.yaml")


def _everything(message: Message) -> bool:
    return True


def _customer_text(message: Message) -> bool:
    return any(filename.startswith(CUSTOMER_SOURCES) for filename, _ in message.locations)


COMPLETE: Mapping[str, Callable[[Message], bool]] = MappingProxyType({
    "en": _everything, "de": _everything, "fr": _customer_text, "es": _customer_text,
})
_PLACEHOLDER = re.compile(r"%(?:\((\w+)\))?[-#0 +]*(?:\d+|\*)?(?:\.\d+)?([diouxXeEfFgGcrsa%])?")


def template_file(locales: Path) -> Path:
    return locales / f"{DOMAIN}.pot"


def extract(root: Path = PROJECT_ROOT) -> Catalog:
    """Every marked message under `root`, where `root`/babel.cfg says to look."""
    root = Path(root).resolve()
    with (root / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg, filename=str(root / "babel.cfg"))
    tops = {pattern.split("/")[0] for pattern, _ in method_map}  # walk only where babel.cfg looks
    catalog = Catalog(project=DOMAIN, fuzzy=False)
    for filename, lineno, message, comments, context in extract_from_dir(
            root, method_map, options_map, comment_tags=("Translators:",),
            strip_comment_tags=True,
            directory_filter=lambda path: Path(path).relative_to(root).parts[0] in tops):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def write_catalog(catalog: Catalog, path: Path) -> None:
    """Write a .po/.pot atomically (another process may be loading it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    with partial.open("wb") as out:
        # No line numbers: a template edit must not rewrite every catalog's comments.
        write_po(out, catalog, width=100, ignore_obsolete=True, include_lineno=False)
    partial.replace(path)


def read_catalog(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=locale, domain=DOMAIN)


def catalog_languages(locales: Path) -> list[str]:
    """The languages with a .po file, read afresh (`available_languages` is cached)."""
    return sorted(path.parent.parent.name for path in locales.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def update(locales: Path, template: Catalog, new: Iterable[str] = ()) -> dict[str, int]:
    """Bring each catalog (and any `new` language) in line with `template`: new msgids come in
    untranslated (English's own catalog copies them), gone ones go. {language: untranslated}."""
    write_catalog(template, template_file(locales))
    untranslated: dict[str, int] = {}
    for language in sorted(set(catalog_languages(locales)) | set(new)):
        po = po_file(locales, language)
        catalog = read_catalog(po, language) if po.exists() else Catalog(
            locale=language, project=DOMAIN, fuzzy=False)
        # update() adopts the template's new messages (hence the copy); no fuzzy guesses: an
        # empty msgstr is plainer to fill than another message's translation to correct.
        catalog.update(copy.deepcopy(template), no_fuzzy_matching=True)
        if language == SOURCE_LANGUAGE:
            for message in catalog:
                if message.id and not _translated(message):
                    message.string = message.id
        write_catalog(catalog, po)
        untranslated[language] = sum(1 for m in catalog if m.id and not _translated(m))
    available_languages.cache_clear()
    return untranslated


def compile_catalogs(locales: Path, force: bool = False) -> list[Path]:
    """Write the `.mo` of every catalog whose `.mo` is missing or older; the ones written."""
    written = []
    for language in catalog_languages(locales):
        po = po_file(locales, language)
        if force or is_stale(po):
            mo = po.with_suffix(".mo")
            partial = mo.with_name(f".{mo.name}.{os.getpid()}")
            partial.write_bytes(compiled_po(po))
            partial.replace(mo)
            written.append(mo)
    return written


@dataclass(frozen=True)
class Problem:
    language: str
    msgid: str
    what: str

    def __str__(self) -> str:
        return f"{self.language}: {self.what}: {self.msgid!r}"


def check(locales: Path, template: Catalog | None = None) -> list[Problem]:
    """What stops the catalogs being complete and safe: a msgid a promised language lacks
    (missing, empty or fuzzy), and a translation whose placeholders differ from its msgid's
    (a renamed %(name)s or a lone % raises when the mail renders)."""
    template = template or read_catalog(template_file(locales))
    problems: list[Problem] = []
    for language in sorted(set(catalog_languages(locales)) | set(COMPLETE)):
        po = po_file(locales, language)
        catalog = read_catalog(po, language) if po.exists() else Catalog(locale=language)
        wanted = COMPLETE.get(language, lambda message: False)
        for expected in template:
            if not expected.id or not wanted(expected):
                continue
            found = catalog.get(expected.id, expected.context)
            if found is None or not _translated(found):
                problems.append(Problem(language, _msgid(expected), "not translated"))
        problems += [Problem(language, _msgid(message), what)
                     for message in catalog if message.id and _translated(message)
                     for what in _placeholder_problems(message)]
    return problems


def _translated(message: Message) -> bool:
    strings = message.string if isinstance(message.string, tuple) else (message.string,)
    return not message.fuzzy and all(strings)


def _msgid(message: Message) -> str:
    return message.id if isinstance(message.id, str) else message.id[0]


def placeholders(text: str) -> Counter[str]:
    """`%(name)s` → name, `%%` → %; a `%` that is neither is "lone %"."""
    found: Counter[str] = Counter()
    for match in _PLACEHOLDER.finditer(text):
        name, kind = match.group(1), match.group(2)
        found["lone %" if kind is None else "%" if kind == "%" else name or "positional"] += 1
    return found


def _placeholder_problems(message: Message) -> list[str]:
    ids = message.id if isinstance(message.id, tuple) else (message.id,)
    strings = message.string if isinstance(message.string, tuple) else (message.string,)
    # `%%` is a literal percent sign and `num` is ngettext's count: a translation may leave
    # either out ("one point" for "%(num)s points").
    expected = [names(placeholders(msgid)) for msgid in ids]
    problems = []
    for string in strings:
        got = placeholders(string)
        if "lone %" in got:
            problems.append("a lone % (write %% for a percent sign)")
        elif names(got) not in expected:
            problems.append(f"placeholders {sorted(names(got))} where the msgid has "
                            f"{sorted(expected[0])}")
    return problems


def names(found: Counter[str]) -> set[str]:
    return set(found) - {"%", "num"}
