"""Translations for every template that a customer or an operator reads.

Templates use Jinja's i18n extension in its "newstyle" form: `{{ _("Your order %(number)s",
number=order.number) }}` and `{% trans %}…{% endtrans %}`. Until a locale's catalog is chosen
for a render, the text comes out as written (English).
"""

from __future__ import annotations

from jinja2 import Environment


def enable_i18n(env: Environment) -> Environment:
    """Add the i18n extension with untranslated (English) text as the default."""
    env.add_extension("jinja2.ext.i18n")
    env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    return env
