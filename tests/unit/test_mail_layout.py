"""Every mail template's layout: phone-ready HTML (viewport, fluid container, preheader, alt
texts, tappable answer buttons, dark-mode colours) and plain text that reads well.

`sample_mails` holds one realistic context per template (as the stages build them: a long
product name, five lines, a discount, two parcels); tests/pages/test_mail_phone.py opens the
same mails in Chromium at 390 px.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest

from tasks.config import Config
from tasks.links import Purpose, link_url
from tasks.messaging.compose import store_context
from tasks.messaging.render import Rendered, Renderer

ISSUED = datetime(2026, 11, 20, 9, 30)
SECRET = "mail-layout-secret"
LONG_TITLE = "Merino Wool Performance Hiking Sweater with Reinforced Elbows and Extra-Long Cuffs"
# Templates whose answer links are buttons, and how many.
BUTTONS = {"feedback_request": 5, "fit_survey": 3}


def link(cfg: Config, purpose: Purpose, subject: int = 42, extra: int = 0) -> str:
    return link_url(cfg.store.links_base_url, SECRET, purpose, subject, ISSUED, extra)


def parcel(carrier: str | None, number: str | None, status: str = "InTransit") -> dict[str, Any]:
    return {"carrier": carrier, "tracking_number": number, "status": status, "substatus": None,
            "tracking_url": number and f"https://www.ups.com/track?tracknum={number}",
            "expected_delivery": None}


def order_lines() -> list[dict[str, Any]]:
    lines = [(LONG_TITLE, "Charcoal / XL", 1, "189.00"), ("Trail Jacket", "Blue / M", 2, "120.00"),
             ("Wool Socks", None, 3, "14.50"), ("Enamel Camping Mug", "Forest green", 1, "18.00"),
             ("Waxed Canvas Weekender Bag", None, 1, "1249.00")]
    return [{"title": title, "variant_title": variant, "sku": f"SKU-{n}", "quantity": quantity,
             "unit_price": price, "line_total": str(quantity * Decimal(price))}
            for n, (title, variant, quantity, price) in enumerate(lines)]


def sample_mails(cfg: Config) -> dict[str, dict[str, Any]]:
    """One context per template, shaped as its stage builds it (see each `*_context`)."""
    store = store_context(cfg)
    order = {"id": 42, "name": "#1001", "currency": "USD", "locale": "en_US"}
    base = {"store": {**store, "links_base_url": cfg.store.links_base_url},
            "customer": {"first_name": "Ada", "name": "Ada Lovelace"}, "order": order}
    tracking = {"order_url": link(cfg, Purpose.ORDER), "store": store,
                "customer": base["customer"],
                "order": {**order, "promised_delivery": "2026-11-25"}}
    return {**order_mails(cfg, base), **tracking_mails(cfg, tracking),
            **marketing_mails(cfg, base), "return_update": return_mail(cfg, base)}


def order_mails(cfg: Config, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    order, lines = base["order"], order_lines()
    survey = link(cfg, Purpose.FEEDBACK)
    ratings = ((1, "Very poor"), (2, "Poor"), (3, "OK"), (4, "Good"), (5, "Excellent"))
    fits = (("too_small", "Too small"), ("just_right", "Just right"), ("too_big", "Too big"))
    return {
        "confirmation": {**base, "order": {
            **order, "lines": lines, "items_total": "1559.50", "subtotal": "1403.55",
            "discounts": "155.95", "discount_codes": ["WELCOME10", "AUTUMN-WEEKEND-2026"],
            "shipping": "9.95", "shipping_method": "Standard shipping", "tax": "112.28",
            "taxes_included": False, "total": "1525.78",
            "gift_note": "Happy birthday <3 & enjoy the trail!",
            "shipping_address": {"name": "Ada Lovelace"},
            "address_lines": ["Ada Lovelace", "12 Elm St", "Portland OR 97201", "United States"],
            "promised_delivery": "2026-11-25"}},
        "service_outcome": {**base, "case": {"decision": "replacement", "reason": "damaged",
                                             "refund_amount": None},
                            "replacement": {"order_id": 43, "url": link(cfg, Purpose.ORDER, 43)}},
        "order_cancelled": {**base, "refund": {"kind": "void_or_refund", "amount": "1525.78",
                                               "business_days": 10}},
        "feedback_request": {**base, "feedback": {"links": [
            {"rating": r, "label": label, "url": f"{survey}?r={r}"} for r, label in ratings]}},
        "fit_survey": {**base, "lines": lines, "fit": {
            "products": [LONG_TITLE, "Trail Jacket"],
            "links": [{"choice": choice, "label": label, "url": f"{survey}/fit?a={choice}"}
                      for choice, label in fits]}},
    }


def tracking_mails(cfg: Config, tracking: dict[str, Any]) -> dict[str, dict[str, Any]]:
    order, number = tracking["order"], "1Z999AA10123456784"
    return {
        "shipped": {**tracking, "shipment": {
            "carrier": "ups", "tracking_number": number,
            "tracking_url": f"https://www.ups.com/track?tracknum={number}",
            "contents": [{"title": line["title"], "quantity": line["quantity"]}
                         for line in order_lines()]}},
        "delivered": {**tracking, "order": {**order, "delivered_on": "2026-11-24"},
                      "shipments": [parcel("ups", number, "Delivered"),
                                    parcel("usps", "9400111899223197428490", "Delivered")],
                      "returns_url": link(cfg, Purpose.RETURNS)},
        "shipment_exception": {**tracking, "shipment": parcel("ups", number),
                               "notice": {"kind": "failed_attempt"}},
        "delay_apology": {**tracking, "order": {**order, "new_estimate": "2026-11-29"},
                          "shipments": [parcel("ups", number), parcel(None, None)]},
        "not_shipped_apology": {**tracking, "order": {
            **order, "new_estimate": "2026-11-30", "ship_by": "2026-11-21"}},
    }


def marketing_mails(cfg: Config, base: dict[str, Any]) -> dict[str, dict[str, Any]]:
    marketing = {**base, "unsubscribe_url": link(cfg, Purpose.PREFERENCES, 7)}
    rewards = link(cfg, Purpose.LOYALTY, 7)
    product = {"sku": "SKU-0", "title": LONG_TITLE,
               "url": "https://northwind.example/products/merino-sweater"}
    picks = [{"sku": f"P-{n}", "title": title, "category": "apparel", "price": price,
              "url": f"https://northwind.example/products/p-{n}"}
             for n, (title, price) in enumerate([("Merino Beanie", "29.00"), (LONG_TITLE, None),
                                                 ("Down Vest", "149.00")])]
    return {
        "review_request": {**marketing, "product": {
            "sku": "SKU-0", "title": LONG_TITLE, "variant": "Charcoal / XL",
            "review_url": link(cfg, Purpose.REVIEW, extra=3)}},
        "care_guide": {**marketing, "product": product, "guide": {
            "title": "Caring for your merino", "url": "https://northwind.example/care/merino",
            "body": "Wash it cold, inside out, and dry it flat: heat and hangers stretch wool."}},
        "cross_sell": {**marketing, "product": product, "picks": picks},
        "replenishment": {**marketing, "product": product, "subscription": {
            "weeks": 6, "url": link(cfg, Purpose.ORDER, extra=3).replace("/o/", "/s/", 1)}},
        "birthday": {**marketing, "offer": {"code": "BDAY-7QX2M4KD9A", "percent_off": 15,
                                            "valid_until": "2026-12-20", "locale": "en_US"}},
        "loyalty_invite": {**marketing, "loyalty": {"join_url": rewards}},
        "loyalty_update": {"store": marketing["store"], "customer": marketing["customer"],
                           "unsubscribe_url": marketing["unsubscribe_url"],
                           "loyalty": {"tier": "silver", "previous_tier": "bronze",
                                       "pending": 1250, "approved": 3400, "url": rewards}},
        "winback": {**marketing, "locale": "en_US", "currency": "USD", "since": "2026-03-02",
                    "picks": picks, "loyalty": {"approved": 3400, "pending": 0, "url": rewards},
                    "offer": {"code": "BACK-4HX2M9QD7Z", "percent_off": 20,
                              "valid_until": "2026-12-20"}},
    }


def return_mail(cfg: Config, base: dict[str, Any]) -> dict[str, Any]:
    """An approved return with a label, an exchange and a return-shipping fee."""
    page = link(cfg, Purpose.RETURNS)
    return {**base, "kind": "approved", "headline": "approved, here is how to send it",
            "message": None, "returns_url": page, "ret": {
                "rma": "RMA-1001-1", "status": "approved", "resolution": "refund",
                "reason_label": "Too small", "goods_value": "378.00", "restocking_fee": None,
                "shipping_fee": "6.95", "refund_estimate": "371.05", "refund_business_days": 5,
                "return_by": "2026-12-24", "refund_amount": None, "credit_amount": None,
                "label_url": f"{page}/label/RMA-1001-1",
                "lines": [{"title": LONG_TITLE, "quantity": 1, "variant_title": "Charcoal / XL",
                           "exchange_for": None},
                          {"title": "Trail Jacket", "quantity": 2, "variant_title": "Blue / M",
                           "exchange_for": "Trail Jacket - Blue / L"}],
                "steps": ["Pack the items securely with a note saying your return number "
                          "RMA-1001-1.",
                          "Print the return label (the link below) and stick it on the parcel.",
                          "Drop the parcel at any UPS Access Point.",
                          "Send it by December 24, 2026."]}}


@pytest.fixture(scope="module")
def mails(cfg) -> dict[str, Rendered]:
    renderer = Renderer(cfg.dir / "templates" / "email", cfg.messaging.templates)
    return {name: renderer.render(name, context) for name, context in sample_mails(cfg).items()}


def variants(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """Other paths through the templates: no first name, no phone, each kind of notice."""
    samples = sample_mails(cfg)
    nameless = [(name, {**context, "customer": {"first_name": None, "name": ""}})
                for name, context in samples.items()]
    ret = samples["return_update"]
    returns = [("return_update", {**ret, "kind": kind, "message": "Worn items.",
                                  "ret": {**ret["ret"], "resolution": resolution,
                                          "credit_amount": "20.00", "refund_amount": "371.05"}})
               for kind, resolution in (("requested", "exchange"), ("rejected", "refund"),
                                        ("received", "refund"), ("refunded", "refund"),
                                        ("exchanged", "exchange"), ("kept_with_credit", "refund"))]
    exception = samples["shipment_exception"]
    notices = [("shipment_exception", {**exception, "notice": {"kind": kind},
                                       "shipment": parcel(None, None)})
               for kind in ("pickup", "lost", "address_problem", "delayed", "other")]
    outcome = samples["service_outcome"]
    outcomes = [("service_outcome", {**outcome, "replacement": None,
                                     "case": {**outcome["case"], "decision": decision,
                                              "refund_amount": "25.00"}})
                for decision in ("refund", "credit")]
    cancelled = samples["order_cancelled"]
    refunds = [("order_cancelled", {**cancelled, "refund": {"kind": kind, "amount": amount,
                                                           "business_days": 5}})
               for kind, amount in (("not_charged", None), ("refunded", "10.00"),
                                    ("void_or_refund", None))]
    confirmation = samples["confirmation"]
    nothing_to_ship = {**confirmation, "order": {**confirmation["order"], "gift_note": None,
                                                 "promised_delivery": None, "discounts": "0",
                                                 "taxes_included": True}}
    no_phone = {**samples["shipped"], "store": {**samples["shipped"]["store"], "phone": None}}
    return [*nameless, *returns, *notices, *outcomes, *refunds,
            ("confirmation", nothing_to_ship), ("shipped", no_phone),
            ("winback", {**samples["winback"], "picks": [], "offer": None,
                         "loyalty": {"approved": 0, "pending": 0, "url": None}})]


class Tags(HTMLParser):
    """The start tags of a document (name, attributes) and the preheader's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.preheader, self._in_preheader = "", False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_preheader = "preheader" in (dict(attrs).get("class") or "").split()

    def handle_endtag(self, tag: str) -> None:
        self._in_preheader = False

    def handle_data(self, data: str) -> None:
        if self._in_preheader:
            self.preheader += data

    def all(self, tag: str, **wanted: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag
                and all(value in (attrs.get(key) or "").split() for key, value in wanted.items())]


def meta(tags: Tags, name: str) -> str | None:
    found = [attrs.get("content") for attrs in tags.all("meta") if attrs.get("name") == name]
    return found[0] if found else None


def preheader_text(tags: Tags) -> str:
    """What the inbox shows: the sentence, without the invisible filler after it."""
    return tags.preheader.replace("\u034f", "").replace("\u200c", "").replace("\xa0", "").strip()


def text_problems(text: str) -> list[str]:
    """Why a plain-text part would read badly (empty: it reads well)."""
    lines = text.split("\n")
    problems = [f"two blank lines in a row at line {n}" for n in range(1, len(lines) - 1)
                if lines[n] == lines[n - 1] == ""]
    problems += [f"trailing spaces: {line!r}" for line in lines if line != line.rstrip()]
    problems += [f"a link inside a sentence: {line!r}" for line in lines
                 if (found := re.search(r"https?://\S+", line)) and line.strip() != found[0]]
    if not text.strip() or text != text.strip() + "\n":
        problems.append("blank lines at the start or the end")
    return problems


def test_every_template_has_a_sample_mail(cfg):
    assert set(sample_mails(cfg)) == set(cfg.messaging.templates)


@pytest.mark.parametrize("name", sorted(BUTTONS) + ["confirmation", "winback"])
def test_html_is_fluid_and_says_so_to_phones(cfg, mails, name):
    html = mails[name].html
    tags = Tags(html)
    assert meta(tags, "viewport") == "width=device-width, initial-scale=1"
    assert meta(tags, "color-scheme") == meta(tags, "supported-color-schemes") == "light dark"
    [container] = tags.all("table", **{"class": "container"})
    assert container["width"] == "100%" and "max-width: 600px" in container["style"]
    outside_outlook = re.sub(r"<!--\[if mso\]>.*?<!\[endif\]-->", "", html, flags=re.S)
    assert not re.search(r'(?<![-\w])width(="|: ?)[0-9]{3,}(px|")', outside_outlook)  # fixed
    style = html.split("<style>")[1].split("</style>")[0]
    assert "@media (prefers-color-scheme: dark)" in style and "@media (max-width: 620px)" in style


def test_every_html_mail_has_its_own_preheader_and_alt_texts(mails):
    preheaders = {}
    for name, mail in mails.items():
        tags = Tags(mail.html)
        preheaders[name] = preheader_text(tags)
        assert len(preheaders[name]) >= 20 and preheaders[name] != mail.subject, name
        assert tags.all("div", **{"class": "preheader"})[0]["style"].startswith("display: none")
        assert all(img.get("alt") is not None for img in tags.all("img")), name
    assert len(set(preheaders.values())) == len(preheaders), preheaders


def test_answer_links_are_buttons_a_thumb_can_hit(cfg, mails):
    for name, count in BUTTONS.items():
        buttons = Tags(mails[name].html).all("a", **{"class": "rating"})
        links = sample_mails(cfg)[name]["feedback" if name == "feedback_request" else "fit"]
        assert [b["href"] for b in buttons] == [link["url"] for link in links["links"]]
        assert len(buttons) == count
        for button in buttons:
            assert "display: inline-block" in button["style"]
            assert "min-height: 44px" in button["style"] and "min-width: 96px" in button["style"]


def test_mails_tell_the_customer_to_write_to_the_reply_to_address(cfg, mails):
    assert cfg.store.reply_to and cfg.store.reply_to != cfg.store.email
    for name, mail in mails.items():
        assert f"write to {cfg.store.reply_to}" in mail.text, name
        assert f'href="mailto:{cfg.store.reply_to}"' in mail.html, name
        assert cfg.store.email not in mail.html + mail.text, name


def test_without_a_reply_to_they_write_to_the_store(cfg):
    renderer = Renderer(cfg.dir / "templates" / "email", cfg.messaging.templates)
    context = sample_mails(cfg)["delivered"]
    context = {**context, "store": {**context["store"], "reply_to": None}}
    rendered = renderer.render("delivered", context)
    assert f"write to {cfg.store.email}" in rendered.text
    assert f'href="mailto:{cfg.store.email}"' in rendered.html


def test_plain_text_reads_well(mails):
    problems = {name: text_problems(mail.text) for name, mail in mails.items()}
    assert {name: found for name, found in problems.items() if found} == {}


def test_plain_text_amounts_line_up(mails):
    """Every line ending in an amount (items, totals, points) ends in the same column."""
    for name in ("confirmation", "loyalty_update", "return_update"):
        rows = [line for line in mails[name].text.split("\n")
                if re.search(r"\S {2,}-?\S*\d$", line)]
        assert len(rows) >= 2 and len({len(row) for row in rows}) == 1, (name, rows)
    text = mails["confirmation"].text
    assert "1 x Merino Wool Performance Hiking Sweater        $189.00\n    with" in text


def test_every_other_path_renders_cleanly(cfg):
    renderer = Renderer(cfg.dir / "templates" / "email", cfg.messaging.templates)
    for name, context in variants(cfg):
        rendered = renderer.render(name, context)
        assert text_problems(rendered.text) == [], (name, rendered.text)
        assert len(preheader_text(Tags(rendered.html))) >= 20, name
        assert "None" not in rendered.text + rendered.html, name
