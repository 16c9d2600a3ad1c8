"""Languages: the catalogs, the locale a mail, document or page speaks, and addresses as each
country writes them."""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from babel.messages.catalog import Catalog
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from flows import pages
from tasks.aftercare.followups import birthday_message
from tasks.confirm import confirm
from tasks.i18n import (
    PROJECT_ROOT,
    accepted_locale,
    available_languages,
    check,
    extract,
    locales_dir,
    po_file,
    preferred_locales,
    read_catalog,
    translations,
    write_catalog,
)
from tasks.links import Purpose, make_token
from tasks.messaging.money import address_lines, format_day, order_locale
from tasks.messaging.render import Renderer
from tasks.store.db import make_engine, session_scope
from tasks.store.journal import PACKED
from tasks.store.migrate import ensure_schema
from tasks.store.models import Customer, Message
from tests.conftest import FIXTURES, ROOT
from tests.factories import add_customer, add_order

MUNICH = {"first_name": "Anna", "last_name": "Schmidt", "address1": "Leopoldstraße 5",
          "city": "München", "zip": "80802", "country_code": "DE"}


def test_the_catalogs_are_complete_and_keep_their_placeholders():
    """Every message the templates mark now (a fresh extraction, not journeys.pot) is
    translated for en and de, and what customers read for fr and es; no translation renames
    or drops a %(placeholder)s. On failure: `journeys i18n update`, translate, rerun."""
    problems = check(locales_dir(ROOT / "configs"), extract(PROJECT_ROOT))
    assert [str(p) for p in problems] == []


def test_check_finds_a_missing_translation_and_a_broken_placeholder(tmp_path):
    template = Catalog()
    for msgid in ("Your order %(order)s", "50%% off", "Thank you"):
        template.add(msgid, locations=[("configs/templates/email/x.html", 1)])
    german = Catalog(locale="de")
    german.add("Your order %(order)s", "Ihre Bestellung %(bestellung)s")
    german.add("50%% off", "50 % Rabatt")
    write_catalog(german, po_file(tmp_path, "de"))
    found = {(p.language, p.msgid, p.what.split(" ")[0]) for p in check(tmp_path, template)}
    assert ("de", "Thank you", "not") in found  # missing
    assert ("de", "Your order %(order)s", "placeholders") in found
    assert ("de", "50%% off", "a") in found  # a lone %: the render would raise
    assert ("fr", "Thank you", "not") in found  # a promised language with no catalog at all


def test_a_po_newer_than_its_mo_is_compiled_in_memory_not_ignored(tmp_path):
    locales = tmp_path / "locales"
    shutil.copytree(ROOT / "configs" / "locales" / "de", locales / "de")
    po = po_file(locales, "de")
    catalog = read_catalog(po, "de")
    catalog.get("Thank you!").string = "Tausend Dank!"
    write_catalog(catalog, po)
    mo = po.with_suffix(".mo")
    if mo.exists():  # an older .mo (as after a `git pull` of a changed .po)
        os.utime(mo, (0, 0))
    assert translations(locales, "de_DE", None).gettext("Thank you!") == "Tausend Dank!"


def test_a_german_order_gets_its_confirmation_in_german(sqlite_engine, runtime, now):
    """The report: English words with German numbers, "München 80802". Now the words, the
    subject, the date, the money and the address all follow the order's locale."""
    with session_scope(sqlite_engine) as session:
        customer = add_customer(session, now, "anna@example.de", first_name="Anna")
        order_id = add_order(session, now, lines=[("TEE-1", 2, "614.75")], state=PACKED,
                             step="confirm", customer=customer, email=customer.email,
                             placed_at=now, locale="de-DE", currency="EUR",
                             shipping_address=dict(MUNICH)).id
    with session_scope(sqlite_engine) as session:
        confirm(session, [order_id], now, runtime)
        message = session.scalars(select(Message)).one()
    renderer = Renderer(ROOT / "configs" / "templates" / "email",
                        runtime.config.messaging.templates, default_locale="en_US")
    german = renderer.render(message.template, message.context)
    day = format_day(message.context["order"]["promised_delivery"], "de_DE")
    order_name = message.context["order"]["name"]

    assert re.fullmatch(r"\d\d\.\d\d\.\d{4}", day)
    assert german.subject == f"Vielen Dank für Ihre Bestellung {order_name}"
    assert "Vielen Dank, Anna!" in german.text
    assert f"Voraussichtliche Lieferung: {day} per Standard." in german.text
    assert re.search(r"Gesamt +1\.234,50\xa0€", german.text)
    assert "80802 München\nDeutschland" in german.text and "80802 München<br>" in german.html

    # The same snapshot in English, after and alongside German renders: nothing leaked.
    english = {**message.context, "order": {**message.context["order"], "locale": "en_US"}}
    with ThreadPoolExecutor(4) as pool:
        subjects = set(pool.map(lambda ctx: renderer.render("confirmation", ctx).subject,
                                [english, message.context] * 4))
    assert subjects == {german.subject, f"Thank you for your order {order_name}"}


def test_a_locale_without_a_catalog_falls_back_to_the_store_default(cfg):
    """An Italian order in a German store: German words, German dates and money (never
    German words with Italian dates); a locale babel does not know at all, the same."""
    languages = available_languages(locales_dir(cfg.dir))
    assert {"de", "en", "fr", "es"} <= languages and "it" not in languages
    assert order_locale("it-IT", None, "de_DE", languages) == "de_DE"
    assert order_locale("xx-YY", "fr-CA", "de_DE", languages) == "fr_CA"
    renderer = Renderer(cfg.dir / "templates" / "email", cfg.messaging.templates,
                        default_locale="de_DE")
    context = json.loads((FIXTURES / "golden" / "confirmation_context.json").read_text())
    context["order"] |= {"locale": order_locale("it_IT", None, "de_DE", languages),
                         "currency": "EUR"}
    rendered = renderer.render("confirmation", context)
    assert rendered.subject == "Vielen Dank für Ihre Bestellung #1001"
    assert "Gesamt" in rendered.text and "257,32\xa0€" in rendered.text
    assert "25.11.2026" in rendered.text


def test_addresses_follow_their_country_and_never_raise():
    assert address_lines(MUNICH, "de_DE") == [
        "Anna Schmidt", "Leopoldstraße 5", "80802 München", "Deutschland"]
    us = {"name": "Ada Lovelace", "address1": "1 Analytical Way", "address2": "Apt 2",
          "city": "Portland", "province_code": "OR", "zip": "97209", "country_code": "US"}
    assert address_lines(us, "de_DE") == [
        "Ada Lovelace", "1 Analytical Way", "Apt 2", "Portland, OR 97209", "Vereinigte Staaten"]
    assert address_lines({**us, "province_code": None}, "en_US")[3] == "Portland, 97209"
    assert address_lines({"name": "X", "city": "Y", "zip": "1", "country_code": "??",
                          "country": "Atlantis"}, "en_US") == ["X", "Y 1", "Atlantis"]
    assert address_lines({}, "en_US") == []


def test_accept_language_is_read_in_order_of_preference():
    header = "en;q=0.5, fr-CH, de;q=0.9, *;q=0.1, xx;q=0"
    assert preferred_locales(header) == ["fr-CH", "de", "en"]
    assert accepted_locale(header, {"de", "en"}) == "de"
    assert accepted_locale(header, {"fr", "en"}) == "fr_CH"
    assert accepted_locale("garbage;;q=x, ;", {"en"}) is None


def test_a_customers_birthday_mail_speaks_their_language_if_we_have_its_words(runtime, now):
    """German words and German dates for an Austrian customer; an Italian one (no catalog)
    gets the store default's words and dates, never Italian dates in English sentences."""
    renderer = Renderer(ROOT / "configs" / "templates" / "email",
                        runtime.config.messaging.templates,
                        default_locale=runtime.config.store.default_locale)
    anna = Customer(id=7, email="anna@example.at", first_name="Anna", locale="de-AT")
    row = birthday_message(anna, now.date(), runtime, now)
    mail = renderer.render(row["template"], row["context"])
    valid_until = format_day(row["context"]["offer"]["valid_until"], "de_AT")
    assert row["context"]["locale"] == row["context"]["offer"]["locale"] == "de_AT"
    assert mail.subject == "Alles Gute zum Geburtstag, Anna!"
    assert f"Gültig bis {valid_until}." in mail.text and "Happy" not in mail.text

    lucia = Customer(id=8, email="lucia@example.it", first_name="Lucia", locale="it-IT")
    context = birthday_message(lucia, now.date(), runtime, now)["context"]
    assert context["locale"] == context["offer"]["locale"] == "en_US"  # the store's


@pytest.fixture(scope="module")
def localized_pages(tmp_path_factory, cfg):
    """The edge's pages in-process (ASGI), over a SQLite store with a French order and two
    German ones (cancelled; delivered, for its survey). Yields (client, tokens, names)."""
    folder = tmp_path_factory.mktemp("i18n_pages")
    url = f"sqlite:///{folder / 'journeys.db'}"
    engine = make_engine(url)
    ensure_schema(engine)
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        orders = {
            "fr": add_order(session, now, state="confirmed", step=None, locale="fr-FR",
                            currency="EUR", promised_delivery=now.date()),
            "de_cancelled": add_order(session, now, state="cancelled", step=None,
                                      locale="de-DE", currency="EUR", cancelled_at=now),
            "de_delivered": add_order(session, now, state="delivered", step=None,
                                      locale="de-DE", currency="EUR", delivered_at=now),
        }
        purposes = {"de_delivered": Purpose.FEEDBACK}
        tokens = {key: make_token("s" * 32, purposes.get(key, Purpose.ORDER), order.id,
                                  now.date()) for key, order in orders.items()}
        names = {key: order.name for key, order in orders.items()}
    app = FastAPI()
    pages.mount(app, cfg, "s" * 32, url, clock=lambda: now)
    yield TestClient(app), tokens, names
    engine.dispose()


def test_a_french_order_page_and_a_french_browser_get_french(localized_pages):
    client, tokens, names = localized_pages
    token, name = tokens["fr"], names["fr"]
    page = client.get(f"/o/{token}", headers={"Accept-Language": "de"}).text
    assert '<html lang="fr">' in page and f"<title>Commande {name} · " in page
    assert "Où en est votre commande" in page and "Adresse de livraison" in page
    assert "Portland, OR 97209" in page and "États-Unis" in page
    friendly = client.get("/o/" + "A" * 48, headers={"Accept-Language": "it, fr-CH;q=0.8"})
    assert friendly.status_code == 404 and "Ce lien n’est plus valide" in friendly.text
    english = client.get("/o/" + "A" * 48).text
    assert '<html lang="en">' in english and "This link is not valid any more" in english


def test_a_german_orders_pages_say_their_python_made_words_in_german(localized_pages):
    """Statuses, problems, labels and form errors worded in Python follow the order's
    language like the templates' words, counts written the German way (2.000)."""
    client, tokens, _ = localized_pages
    cancelled = client.get(f"/o/{tokens['de_cancelled']}", headers={"Accept-Language": "en"})
    assert "Bestellung bestätigt" in cancelled.text  # the timeline's first step
    assert "Diese Bestellung wurde storniert." in cancelled.text  # the problem notice
    assert "This order was cancelled" not in cancelled.text

    unanswered = client.post(f"/f/{tokens['de_delivered']}", data={"comment": "Hm"},
                             headers={"Sec-Fetch-Site": "same-origin"})
    assert unanswered.status_code == 422
    page = unanswered.text
    assert "Bitte wählen Sie eine Bewertung von 1 bis 5." in page  # the form's error
    assert "1 – Sehr schlecht" in page and "Etwas ist beschädigt angekommen" in page
    assert "Bis zu 2.000 Zeichen." in page and "Please" not in page
