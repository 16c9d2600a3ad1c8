"""Render e-mails from operator-editable templates: sandboxed, autoescaped, strict, parsed once.

CSS lives in one stylesheet next to the templates and is inlined into each HTML template's
*source* when Jinja first loads it, so every later render reuses a template that is already
inlined: the cost is paid once per template per process, never per message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tasks.config import Config, TemplateSpec
from tasks.i18n import enable_i18n, gettext_names, locales_dir
from tasks.messaging.money import format_day, format_money

STYLESHEET = "email.css"
SUBJECT_MAX = 200
_JINJA_TAG = re.compile(r"\{%.*?%\}|\{#.*?#\}|\{\{.*?\}\}", re.S)
# A comment marker inside <title> comes back escaped; it is still the same marker.
_PLACEHOLDER = re.compile(r"<!--J(\d+)-->|&lt;!--J(\d+)--&gt;|JJ(\d+)JJ")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x1f\x7f\s]+")


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def one_line(text: str) -> str:
    """No CR/LF or other control characters, runs of whitespace collapsed to one space."""
    return _CONTROL_OR_SPACE.sub(" ", text).strip()


def clean_subject(subject: str) -> str:
    """A subject that cannot break a header: one line, at most 200 characters."""
    return one_line(subject)[:SUBJECT_MAX].rstrip()


def _ends_inside_tag(segment: str, was_inside: bool) -> bool:
    """Whether HTML text ending with `segment` leaves us inside a start tag's attributes."""
    opened, closed = segment.rfind("<"), segment.rfind(">")
    return was_inside if opened == closed == -1 else opened > closed


def _protect(source: str) -> tuple[str, list[str]]:
    """Swap Jinja tags for markers the HTML parser never moves.

    Between elements a marker is a comment (comments stay put, even between table rows);
    inside a start tag it is a plain word in the attribute value.
    """
    tags: list[str] = []
    out: list[str] = []
    position, inside = 0, False
    for match in _JINJA_TAG.finditer(source):
        segment = source[position : match.start()]
        inside = _ends_inside_tag(segment, inside)
        n = len(tags)
        out += [segment, f"JJ{n}JJ" if inside else f"<!--J{n}-->"]
        tags.append(match.group(0))
        position = match.end()
    out.append(source[position:])
    return "".join(out), tags


def _restore(html: str, tags: list[str], name: str) -> str:
    found = [int(next(g for g in m.groups() if g)) for m in _PLACEHOLDER.finditer(html)]
    if found != list(range(len(tags))):
        raise TemplateError(
            f"{name}: CSS inlining moved or lost a Jinja tag; keep tags out of raw-text "
            "elements such as <style> and <script>"
        )
    return _PLACEHOLDER.sub(lambda m: tags[int(next(g for g in m.groups() if g))], html)


def inline_css(source: str, css: str, name: str = "<template>") -> str:
    """Inline `css` into an HTML template source without disturbing its Jinja tags."""
    protected, tags = _protect(source)
    if "<html" in protected.lower():
        inliner = css_inline.CSSInliner(
            extra_css=css, keep_at_rules=True, load_remote_stylesheets=False
        )
        inlined = inliner.inline(protected)
    else:
        inlined = css_inline.inline_fragment(protected, css, load_remote_stylesheets=False)
    return _restore(inlined, tags, name)


class InliningLoader(FileSystemLoader):
    """Loads templates from one folder; `.html` sources come back with the CSS inlined."""

    def __init__(self, template_dir: Path) -> None:
        super().__init__(str(template_dir))
        stylesheet = template_dir / STYLESHEET
        self.css = stylesheet.read_text(encoding="utf-8") if stylesheet.exists() else ""

    def get_source(
        self, environment: Any, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = super().get_source(environment, template)
        if template.endswith(".html"):
            source = inline_css(source, self.css, template)
        return source, filename, uptodate


def make_environment(template_dir: Path) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=InliningLoader(template_dir),
        autoescape=select_autoescape(["html"], default_for_string=False),
        undefined=StrictUndefined,
        auto_reload=False,  # parsed once per process; no stat() per render
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["money"] = format_money
    env.filters["date"] = format_day
    return enable_i18n(env)


class Renderer:
    """Renders `<name>.html`, `<name>.txt` and the spec's subject; one instance per process.

    In the mail's locale (`mail_locale`: the order's, as its context snapshot recorded it),
    through that locale's catalog in `locales` (default: the config folder's, next to the
    templates), else the store's `default_locale`'s."""

    def __init__(self, template_dir: Path, specs: Mapping[str, TemplateSpec],
                 locales: Path | None = None, default_locale: str | None = None) -> None:
        self.env = make_environment(Path(template_dir))
        self.locales = locales or locales_dir(Path(template_dir).parent.parent)
        self.default_locale = default_locale
        self._subjects: dict[str, Template] = {
            name: self.env.from_string(spec.subject) for name, spec in specs.items()
        }

    def render(self, name: str, context: Mapping[str, Any],
               locale: str | None = None) -> Rendered:
        if name not in self._subjects:
            raise LookupError(f"no template spec named {name!r} in messaging.yaml")
        words = gettext_names(self.locales, locale or mail_locale(context), self.default_locale)
        subject = clean_subject(self._subjects[name].render({**context, **words}))
        full = {**context, "subject": subject, **words}
        html = self.env.get_template(f"{name}.html").render(full)
        text = self.env.get_template(f"{name}.txt").render(full)
        return Rendered(subject=subject, html=html, text=text)


def mail_locale(context: Mapping[str, Any]) -> str | None:
    """The locale a mail's context snapshot was written for: an order's mail has it in
    `order.locale`, a customer's (win-back) at the top, the birthday offer in `offer.locale`;
    None (the store's default) when it has none."""
    for place in ("order", "offer"):
        inner = context.get(place)
        if isinstance(inner, Mapping) and inner.get("locale"):
            return str(inner["locale"])
    return str(context["locale"]) if context.get("locale") else None


_RENDERERS: dict[Path, Renderer] = {}


def renderer_for(config: Config) -> Renderer:
    """The process-wide Renderer for a config folder (templates parse and inline once)."""
    if config.dir not in _RENDERERS:
        _RENDERERS[config.dir] = Renderer(
            config.dir / "templates" / "email", config.messaging.templates,
            locales_dir(config.dir), config.store.default_locale,
        )
    return _RENDERERS[config.dir]
