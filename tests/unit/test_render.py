"""Rendering: golden confirmation e-mail, escaping, strictness, sandbox, CSS inlined once."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
from jinja2 import TemplateError, UndefinedError
from jinja2.exceptions import SecurityError

from tasks.config import TemplateSpec
from tasks.messaging import render
from tasks.messaging.render import Renderer, clean_subject, inline_css, renderer_for
from tests.conftest import FIXTURES

GOLDEN = FIXTURES / "golden"
UPDATE_GOLDEN = os.environ.get("JOURNEYS_UPDATE_GOLDEN") == "1"


@pytest.fixture
def context() -> dict:
    return json.loads((GOLDEN / "confirmation_context.json").read_text(encoding="utf-8"))


@pytest.fixture
def renderer(cfg) -> Renderer:
    """A fresh renderer (not the process-wide one) so each test parses templates itself."""
    return Renderer(cfg.dir / "templates" / "email", cfg.messaging.templates)


def assert_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{name} changed: review, then rerun with JOURNEYS_UPDATE_GOLDEN=1"


def test_confirmation_matches_golden_files(renderer, context):
    rendered = renderer.render("confirmation", context)
    assert rendered.subject == "Thank you for your order #1001"
    assert_golden("confirmation.html", rendered.html)
    assert_golden("confirmation.txt", rendered.text)


def test_confirmation_html_has_css_inlined_and_every_figure(renderer, context):
    html = renderer.render("confirmation", context).html
    styles = html.split("<style>")[1:]
    assert len(styles) == 1 and styles[0].startswith("@media")  # only at-rules stay behind
    assert 'class="amount" style="' in html
    for figure in ("$240.00", "$254.50", "−$25.45", "WELCOME10", "$9.95", "$18.32", "$257.32"):
        assert figure in html
    assert "Nov 25, 2026" in html and "Standard shipping" in html
    assert "100 Harbor Way, Portland, OR 97209, USA" in html


def test_taxes_included_are_labelled(renderer, context):
    context["order"]["taxes_included"] = True
    rendered = renderer.render("confirmation", context)
    assert "Tax (incl.)" in rendered.html
    assert re.search(r"^Tax \(incl\.\) +\$18\.32$", rendered.text, re.M)


def test_german_locale_formats_money_and_dates(renderer, context):
    context["order"].update(currency="EUR", locale="de_DE", total="1234.50")
    text = renderer.render("confirmation", context).text
    assert re.search(r"^Gesamt +1\.234,50\xa0€$", text, re.M) and "25.11.2026" in text


def test_customer_text_is_escaped_and_never_run_as_a_template(renderer, context):
    context["customer"]["first_name"] = "<script>alert(1)</script>{{ 7*7 }}"
    context["order"]["gift_note"] = "{% for x in range(3) %}boom{% endfor %} & <b>love</b>"
    context["order"]["name"] = "#1001 {{ store.email }}"
    rendered = renderer.render("confirmation", context)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;{{ 7*7 }}" in rendered.html
    assert "<script>" not in rendered.html and "49" not in rendered.html
    assert "{% for x in range(3) %}boom{% endfor %} &amp; &lt;b&gt;love&lt;/b&gt;" in rendered.html
    assert "<script>alert(1)</script>{{ 7*7 }}" in rendered.text  # plain text stays as written
    assert rendered.subject == "Thank you for your order #1001 {{ store.email }}"


def test_missing_context_value_is_an_error_not_a_blank(renderer, context):
    del context["order"]["total"]
    with pytest.raises(UndefinedError):
        renderer.render("confirmation", context)


def test_subject_is_one_line_and_bounded(renderer, context):
    context["order"]["name"] = "#1001\r\nBcc: evil@example.com\t\t" + "x" * 300
    subject = renderer.render("confirmation", context).subject
    assert "\r" not in subject and "\n" not in subject and "\t" not in subject
    assert subject.startswith("Thank you for your order #1001 Bcc: evil@example.com x")
    assert len(subject) == 200


def test_clean_subject_strips_control_characters():
    assert clean_subject("  Hello\x00\x0b  there\u2028 \n") == "Hello there"


def test_css_is_inlined_once_per_template_not_per_message(cfg, context, monkeypatch):
    calls: list[str] = []
    original = render.inline_css

    def counting(source: str, css: str, name: str = "") -> str:
        calls.append(name)
        return original(source, css, name)

    monkeypatch.setattr(render, "inline_css", counting)
    renderer = Renderer(cfg.dir / "templates" / "email", cfg.messaging.templates)
    for _ in range(5):
        renderer.render("confirmation", context)
    assert sorted(calls) == ["base.html", "confirmation.html"]


def test_renderer_for_is_one_per_process(cfg):
    assert renderer_for(cfg) is renderer_for(cfg)


def test_sandbox_blocks_operator_templates_from_reaching_python(tmp_path: Path):
    (tmp_path / "evil.html").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    (tmp_path / "evil.txt").write_text("x")
    spec = TemplateSpec.model_validate({"class": "transactional", "version": 1, "subject": "s"})
    with pytest.raises(SecurityError):
        Renderer(tmp_path, {"evil": spec}).render("evil", {})


def test_inlining_keeps_jinja_tags_where_they_were():
    source = '<table>{% for x in xs %}<tr><td class="c">{{ x }}</td></tr>{% endfor %}</table>'
    inlined = inline_css(source, ".c { color: red; }")
    assert inlined == (
        '<table>{% for x in xs %}<tbody><tr><td class="c" style="color: red;">{{ x }}</td>'
        "</tr>{% endfor %}</tbody></table>"
    )


def test_inlining_keeps_an_expression_between_rows_and_in_attributes():
    source = '<table>{{ rows }}<tr><td><a href="{{ url }}?a=1&b=2">{{ "<" }}</a></td></tr></table>'
    inlined = inline_css(source, "td { color: red; }")
    assert inlined == (
        '<table>{{ rows }}<tbody><tr><td style="color: red;"><a href="{{ url }}?a=1&amp;b=2">'
        '{{ "<" }}</a></td></tr></tbody></table>'
    )


def test_inlining_refuses_a_tag_it_would_lose():
    source = "<html><head><style>td { color: {{ colour }}; }</style></head><body></body></html>"
    with pytest.raises(TemplateError, match="moved or lost"):
        inline_css(source, "")


def test_unknown_template_name(renderer, context):
    with pytest.raises(LookupError):
        renderer.render("nope", copy.deepcopy(context))
