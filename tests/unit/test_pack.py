"""Packing: pure rule logic, the batch stage on SQLite and PostgreSQL, the slip's golden file."""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, func, select, update

from tasks.archive import FileStore
from tasks.config import CarrierConstraints, InsertRules, PackingCondition, PackingRule
from tasks.documents import (
    document_context,
    document_locale,
    documents_dir,
    format_money,
    render_document,
    template_environment,
)
from tasks.pack import (
    LineFacts,
    combine_carrier,
    effect_key,
    instructions,
    insurance,
    line_facts,
    matched_rules,
    member_folder,
    note_reasons,
    pack,
    packing_plan,
    promo_code,
    rule_matches,
)
from tasks.store.db import session_factory
from tasks.store.journal import PACKED, PENDING, VERIFIED
from tasks.store.models import Artifact, Customer, Order, OrderLine, Product, Step
from tests.conftest import FIXTURES, NOW

GOLDEN = FIXTURES / "golden" / "packing_slip.html"
GIFT_NOTE = "Happy birthday, Sam!\n<script>alert('x')</script>"


# --- pure rule logic ----------------------------------------------------------------------------


def facts(sku: str = "S", tags=(), category=None, grams=0, price="10") -> LineFacts:
    return LineFacts(1, sku, frozenset(tags), category, grams, Decimal(price))


@pytest.mark.parametrize(
    ("when", "line", "expected"),
    [
        ({"tags_any": ["fragile", "glass"]}, facts(tags={"glass"}), True),
        ({"tags_any": ["fragile"]}, facts(tags={"sturdy"}), False),
        ({"categories": ["food"]}, facts(category="food"), True),
        ({"categories": ["food"]}, facts(category=None), False),
        ({"min_grams": 20000}, facts(grams=20000), True),
        ({"min_grams": 20000}, facts(grams=19999), False),
        ({"min_unit_price": {"USD": "500"}}, facts(price="500.00"), True),
        ({"min_unit_price": {"USD": "500"}}, facts(price="499.99"), False),
        ({"tags_any": ["oversized"], "min_grams": 20000}, facts(tags={"oversized"}), True),
        ({}, facts(tags={"glass"}, category="food", grams=10**6, price="10000"), False),
    ],
)
def test_rule_matches_when_any_condition_holds(when, line, expected) -> None:
    assert rule_matches(PackingCondition(**when), line, "USD") is expected


def test_line_facts_total_grams_and_missing_product_has_no_attributes() -> None:
    line = OrderLine(position=2, sku="GHOST", quantity=3, unit_price=Decimal("5"), grams=100)
    product = Product(sku="GHOST", title="t", tags=["Glass"], category="Home", grams=400)
    assert line_facts(line, product) == LineFacts(
        2, "GHOST", frozenset({"glass"}), "home", 1200, Decimal("5")
    )
    assert line_facts(line, None) == LineFacts(2, "GHOST", frozenset(), None, 300, Decimal("5"))


def test_instructions_deduplicate_in_rule_order_and_merge_skus() -> None:
    wrap = PackingRule(
        name="wrap",
        when=PackingCondition(tags_any=["fragile"]),
        materials=["bubble wrap", "box"],
        labels=["FRAGILE"],
    )
    heavy = PackingRule(name="heavy", when=PackingCondition(min_grams=1000), materials=["box"])
    lines = [facts("A", tags={"fragile"}), facts("B", grams=5000)]
    steps = instructions(matched_rules([wrap, heavy], lines, "USD"))
    assert steps == [
        {"kind": "material", "text": "bubble wrap", "rule": "wrap", "skus": ["A"]},
        {"kind": "material", "text": "box", "rule": "wrap", "skus": ["A", "B"]},
        {"kind": "label", "text": "FRAGILE", "rule": "wrap", "skus": ["A"]},
    ]


def test_carrier_constraints_take_the_strictest_combination() -> None:
    combined = combine_carrier(
        [
            CarrierConstraints(max_transit_days=3, ship_weekdays=[0, 1, 2, 3], methods=["a", "b"]),
            CarrierConstraints(max_transit_days=2, ship_weekdays=[1, 2, 4], no_air=True),
            CarrierConstraints(signature=True, methods=["b", "c"]),
        ]
    )
    assert combined == {
        "max_transit_days": 2,
        "ship_weekdays": [1, 2],
        "methods": ["b"],
        "no_air": True,
        "signature": True,
    }


def test_carrier_without_constraints_and_with_conflicts() -> None:
    assert combine_carrier([]) == {
        "max_transit_days": None,
        "ship_weekdays": None,
        "methods": None,
        "no_air": False,
        "signature": False,
    }
    conflict = combine_carrier(
        [CarrierConstraints(ship_weekdays=[0]), CarrierConstraints(ship_weekdays=[4])]
    )
    assert conflict["ship_weekdays"] == []


def test_only_chilled_goods_get_the_cold_chain(cfg) -> None:
    """Ground coffee and chocolate are shelf-stable (tagged "perishable": a best-before date):
    food-safe packing, no ice, no 2-day service. Smoked salmon is tagged chilled: cold chain."""
    coffee = facts("COF-GROUND", tags={"perishable", "coffee"}, category="coffee")
    chocolate = facts("FOD-CHOC", tags={"perishable", "gift"}, category="food")
    salmon = facts("FOD-SALMON", tags={"perishable", "chilled"}, category="food")
    shelf = instructions(matched_rules(cfg.packing.rules, [coffee, chocolate], "USD"))
    assert [(i["kind"], i["text"]) for i in shelf] == [
        ("material", "food-safe inner bag"),
        ("handling", "Keep food apart from liquids, skincare and fragrances")]
    cold = matched_rules(cfg.packing.rules, [salmon], "USD")
    assert [rule.name for rule, _ in cold] == ["chilled", "food"]
    assert "PERISHABLE - KEEP COOL" in cold[0][0].labels
    assert combine_carrier(rule.carrier for rule, _ in cold)["max_transit_days"] == 2


def test_insurance_by_value_threshold_or_category(cfg) -> None:
    rules = cfg.packing.insurance  # threshold USD 300, categories jewelry/electronics
    # subtotal is the goods after discounts (Shopify's subtotal_price): not reduced again
    cheap = Order(currency="USD", subtotal=Decimal("300"), discounts=Decimal("10"))
    assert insurance(cheap, [facts(category="home")], rules)["insured"] is False
    pricey = Order(currency="USD", subtotal=Decimal("300.01"), discounts=Decimal("10"))
    assert insurance(pricey, [], rules) == {
        "insured": True,
        "insured_value": "300.01",
        "insurance_reasons": ["goods value above 300 USD"],
    }
    ring = insurance(cheap, [facts(category="jewelry")], rules)
    assert ring["insured"] is True and ring["insurance_reasons"] == ["category jewelry"]


def test_promo_code_is_deterministic_and_unique_per_order() -> None:
    first = Order(id=1, external_id="1001")
    assert promo_code("k", first, "THANKS") == promo_code(
        "k", Order(id=1, external_id="1001"), "THANKS"
    )
    assert promo_code("k", first, "THANKS") != promo_code(
        "k", Order(id=2, external_id="1002"), "THANKS"
    )
    assert promo_code("k", first, "THANKS") != promo_code("other", first, "THANKS")
    code = promo_code("k", first, "THANKS")
    assert code.startswith("THANKS-") and len(code) == 17 and code[7:].isalnum()


def test_note_reasons() -> None:
    rules = InsertRules.model_validate({"handwritten_note": {"vip_tags": ["VIP"]}})
    regular = Customer(orders_count=4, tags=[])
    assert note_reasons(Order(gift_note=None), regular, rules) == []
    assert note_reasons(Order(gift_note="  "), regular, rules) == []
    first = Customer(orders_count=1, tags=["VIP"])
    assert note_reasons(Order(gift_note="Hi"), first, rules) == [
        "first order",
        "VIP customer",
        "gift message",
    ]


def test_member_folder_is_file_name_safe() -> None:
    assert member_folder(Order(id=7, external_id="../#1001 a/b")) == "7-1001_a_b"
    assert member_folder(Order(id=8, external_id="..")) == "8-order"


def test_document_locale_falls_back_to_the_store_default(cfg) -> None:
    assert document_locale(Order(locale="de-DE", customer=None), cfg.store) == "de_DE"
    unknown = Order(locale="xx-YY", customer=Customer(locale="not a locale"))
    assert document_locale(unknown, cfg.store) == "en_US"
    assert format_money(Decimal("1234.5"), "EUR", "de_DE") == "1.234,50\xa0€"


def test_templates_are_parsed_once_per_process(cfg) -> None:
    env = template_environment(documents_dir(cfg))
    assert env is template_environment(documents_dir(cfg))
    assert env.get_template("invoice.html") is env.get_template("invoice.html")


# --- the stage against the database ---------------------------------------------------------------


def _product(sku: str, category: str, tags: list[str], grams: int, price: str) -> Product:
    return Product(
        sku=sku,
        title=sku.title(),
        category=category,
        tags=tags,
        grams=grams,
        price=Decimal(price),
        updated_at=NOW,
    )


def _line(
    position: int, sku: str, title: str, quantity: int, price: str, variant=None
) -> OrderLine:
    return OrderLine(
        position=position,
        sku=sku,
        title=title,
        variant_title=variant,
        quantity=quantity,
        unit_price=Decimal(price),
        total_discount=Decimal("0"),
    )


def _order(external_id: str, customer: Customer, lines: list[OrderLine], **money) -> Order:
    values = {
        "subtotal": "764.00",
        "discounts": "10.00",
        "shipping": "12.00",
        "tax": "61.12",
        "total": "827.12",
    }
    values.update(money)
    return Order(
        source="canonical",
        external_id=external_id,
        name=f"#{external_id}",
        payload_hash="0" * 64,
        customer=customer,
        email=customer.email,
        currency="USD",
        locale="en-US",
        financial_status="paid",
        **{k: Decimal(v) for k, v in values.items()},
        discount_codes=[{"code": "WELCOME10", "amount": "10.00"}],
        shipping_title="Standard",
        shipping_address={
            "first_name": "Sam",
            "last_name": "Rivera",
            "address1": "12 Elm St",
            "city": "Portland",
            "province_code": "OR",
            "zip": "97201",
            "country_code": "US",
        },
        placed_at=NOW - timedelta(hours=3),
        state=VERIFIED,
        received_at=NOW - timedelta(hours=3),
        updated_at=NOW,
        lines=lines,
    )


def example_order(customer: Customer) -> Order:
    """Fragile glass, perishable coffee and jewelry, a first-time customer's gift."""
    lines = [
        _line(1, "VASE-GLASS", "Glass vase", 2, "45.00", "Smoke"),
        _line(2, "COFFEE-1KG", "House roast", 1, "24.00", "Whole bean"),
        _line(3, "RING-GOLD", "Gold ring", 1, "650.00", "Size 7"),
    ]
    order = _order("1001", customer, lines)
    order.gift_note = GIFT_NOTE
    return order


def seed(session) -> list[int]:
    session.add_all(
        [
            _product("VASE-GLASS", "home", ["glass", "fragile"], 1200, "45"),
            _product("COFFEE-1KG", "coffee", ["perishable"], 1000, "24"),
            _product("RING-GOLD", "jewelry", [], 20, "650"),
            _product("SERUM-30", "skincare", ["liquid"], 90, "38"),
        ]
    )
    first = Customer(
        email="sam@example.com", orders_count=1, tags=[], created_at=NOW, updated_at=NOW
    )
    vip = Customer(
        email="vip@example.com", orders_count=9, tags=["VIP"], created_at=NOW, updated_at=NOW
    )
    serum = [
        _line(1, "SERUM-30", "Face serum", 1, "38.00"),
        _line(2, "GHOST-1", "Unlisted", 1, "600.00"),
    ]
    orders = [
        example_order(first),
        _order("1002", vip, serum, subtotal="638", discounts="0", tax="0", total="650"),
    ]
    session.add_all(orders)
    session.flush()
    session.add_all(
        [
            Step(order_id=o.id, name="pack", due_at=NOW, status=PENDING, updated_at=NOW)
            for o in orders
        ]
    )
    return [o.id for o in orders]


class CountingStore(FileStore):
    """The real file store, counting the objects it is asked to write."""

    writes = 0

    def _write(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        self.writes += 1
        super()._write(key, data, sha256, content_type)


@pytest.fixture
def packed(engine, runtime, tmp_path, now):
    """Two verified orders packed once; yields (session maker, order ids, result, store)."""
    store = CountingStore(tmp_path / "artifacts")
    runtime.archive = store
    make_session = session_factory(engine)
    with make_session() as session, session.begin():
        ids = seed(session)
    with make_session() as session, session.begin():
        result = pack(session, ids, now, runtime)
    return make_session, ids, result, store


def test_pack_plans_documents_and_advances_the_batch(packed, runtime) -> None:
    make_session, ids, result, store = packed
    assert (result.advanced, result.skipped, result.details) == (
        2,
        0,
        {"documents": 4, "insured": 2},
    )
    assert store.writes == 1  # one bundle for the whole batch
    with make_session() as session:
        orders = {o.external_id: o for o in session.scalars(select(Order).where(Order.id.in_(ids)))}
        steps = session.scalars(
            select(Step).where(Step.order_id.in_(ids), Step.name == "pack")
        ).all()
    assert {o.state for o in orders.values()} == {PACKED}
    assert {s.status for s in steps} == {"done"}
    plan = orders["1001"].packing
    assert [(i["kind"], i["text"], i["rule"], i["skus"]) for i in plan["instructions"]] == [
        ("material", "bubble wrap per item", "fragile", ["VASE-GLASS"]),
        ("material", "double-wall box", "fragile", ["VASE-GLASS"]),
        ("label", "FRAGILE", "fragile", ["VASE-GLASS"]),
        (
            "handling",
            "Wrap each fragile item separately; fill voids so nothing moves",
            "fragile",
            ["VASE-GLASS"],
        ),
        ("material", "food-safe inner bag", "food", ["COFFEE-1KG"]),
        ("handling", "Keep food apart from liquids, skincare and fragrances", "food",
         ["COFFEE-1KG"]),
        ("material", "tamper-evident tape", "high_value", ["RING-GOLD"]),
        ("material", "plain outer box", "high_value", ["RING-GOLD"]),
        ("handling", "Signature on delivery; no brand marks outside", "high_value", ["RING-GOLD"]),
    ]
    assert plan["labels"] == ["FRAGILE"]  # coffee keeps: no cold chain (see the test below)
    assert plan["carrier"] == {
        "max_transit_days": None,
        "ship_weekdays": None,
        "methods": None,
        "no_air": False,
        "signature": True,
    }
    assert (plan["insured"], plan["insured_value"]) == (True, "764.00")
    assert plan["insurance_reasons"] == ["goods value above 300 USD", "category jewelry"]


def test_pack_inserts_and_the_unlisted_sku(packed, now) -> None:
    make_session, ids, _, _ = packed
    with make_session() as session:
        orders = {o.external_id: o for o in session.scalars(select(Order).where(Order.id.in_(ids)))}
    first, vip = orders["1001"].packing, orders["1002"].packing
    note, promo, sample = first["inserts"]
    assert note == {"kind": "handwritten_note", "reasons": ["first order", "gift message"]}
    assert promo["kind"] == "promo" and promo["percent_off"] == 10
    assert promo["expires_on"] == (now + timedelta(days=60)).date().isoformat()
    assert sample == {"kind": "sample", "category": "coffee", "text": "single-origin tasting pack"}
    assert vip["inserts"][0] == {"kind": "handwritten_note", "reasons": ["VIP customer"]}
    assert vip["inserts"][1]["code"] != promo["code"]
    assert vip["inserts"][2]["text"] == "travel-size face serum"
    # GHOST-1 is not in the catalog: no tags, but its unit price still makes it high value.
    assert vip["carrier"]["no_air"] is True and vip["carrier"]["signature"] is True
    assert ["GHOST-1"] in [i["skus"] for i in vip["instructions"] if i["rule"] == "high_value"]


def test_pack_archives_verified_documents_with_artifact_rows(packed, runtime) -> None:
    make_session, ids, _, store = packed
    with make_session() as session:
        rows = session.scalars(select(Artifact).order_by(Artifact.effect_key)).all()
        first = session.scalars(select(Order).where(Order.external_id == "1001")).one()
    assert len(rows) == 4 and {r.order_id for r in rows} == set(ids)
    slip_row = next(r for r in rows if r.effect_key == effect_key(first, "packing_slip"))
    assert slip_row.kind == "packing_slip" and slip_row.created_at == NOW
    assert slip_row.ref.endswith(f"#{first.id}-1001/packing_slip.html")
    assert first.packing["documents"]["packing_slip"] == slip_row.ref
    slip = runtime.archive.get(slip_row.ref)
    assert (len(slip), len({r.ref.split("#")[0] for r in rows})) == (slip_row.size, 1)
    html = slip.decode()
    assert "Happy birthday, Sam!" in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html and "<script>" not in html
    assert first.packing["inserts"][1]["code"] in html
    invoice = runtime.archive.get(first.packing["documents"]["invoice"]).decode()
    assert "$650.00" in invoice and "$827.12" in invoice and "US-12-3456789" in invoice
    assert "Discounts (WELCOME10)" in invoice and "-$10.00" in invoice


def test_pack_twice_changes_nothing(packed, runtime, now) -> None:
    make_session, ids, _, store = packed
    with make_session() as session, session.begin():
        again = pack(session, ids, now + timedelta(minutes=5), runtime)
    with make_session() as session:
        artifacts = session.scalar(select(func.count()).select_from(Artifact))
    assert (again.advanced, again.skipped, store.writes, artifacts) == (0, 2, 1, 4)


def test_reopened_pack_reuses_archived_documents(packed, runtime, now) -> None:
    make_session, ids, _, store = packed
    with make_session() as session, session.begin():
        before = {o.id: o.packing["documents"] for o in session.scalars(select(Order))}
        session.execute(update(Order).values(state=VERIFIED))
    with make_session() as session, session.begin():
        again = pack(session, ids, now + timedelta(days=1), runtime)
    with make_session() as session:
        after = {o.id: o.packing["documents"] for o in session.scalars(select(Order))}
    assert (again.advanced, again.details["documents"], store.writes) == (2, 0, 1)
    assert after == before


def test_pack_runs_a_constant_number_of_statements(engine, runtime, now, tmp_path) -> None:
    runtime.archive = CountingStore(tmp_path / "artifacts")
    make_session = session_factory(engine)
    with make_session() as session, session.begin():
        ids = seed(session)
        extra = [
            _order(
                f"20{n}",
                Customer(email=f"c{n}@x.example", created_at=NOW, updated_at=NOW),
                [_line(1, "VASE-GLASS", "Glass vase", 1, "45")],
            )
            for n in range(3)
        ]
        session.add_all(extra)
        session.flush()
    counts = []
    for batch in ([ids[0]], [ids[1]] + [o.id for o in extra]):
        statements: list[str] = []

        def record(*args, statements=statements) -> None:
            statements.append(args[2])

        event.listen(engine, "before_cursor_execute", record)
        with make_session() as session, session.begin():
            pack(session, batch, now, runtime)
        event.remove(engine, "before_cursor_execute", record)
        counts.append(len(statements))
    assert counts[0] == counts[1] > 0


# --- golden packing slip ----------------------------------------------------------------------


def test_packing_slip_matches_golden_file(runtime, now) -> None:
    """Set JOURNEYS_UPDATE_GOLDEN=1 to regenerate after an intended template change."""
    customer = Customer(email="sam@example.com", orders_count=1, tags=[], locale="en_US")
    order = example_order(customer)
    order.id = 1001
    products = {
        "VASE-GLASS": _product("VASE-GLASS", "home", ["glass", "fragile"], 1200, "45"),
        "COFFEE-1KG": _product("COFFEE-1KG", "coffee", ["perishable"], 1000, "24"),
        "RING-GOLD": _product("RING-GOLD", "jewelry", [], 20, "650"),
    }
    plan = packing_plan(order, products, runtime, now)
    context = document_context(order, plan, runtime.config.store)
    html = render_document(documents_dir(runtime.config), "packing_slip", context)
    if os.environ.get("JOURNEYS_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(html, encoding="utf-8")
    assert GOLDEN.exists(), f"{GOLDEN} missing: run with JOURNEYS_UPDATE_GOLDEN=1"
    assert html == GOLDEN.read_text(encoding="utf-8")
