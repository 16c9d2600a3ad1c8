"""Issue 13: money thresholds per currency; paid orders with nothing to ship complete."""

from __future__ import annotations

import shutil
from decimal import Decimal

import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy import select

from tasks.config import ConfigError, InsuranceRules, PackingConfig, load_config
from tasks.confirm import confirm
from tasks.pack import LineFacts, insurance, matched_rules
from tasks.store.db import session_scope
from tasks.store.models import Order, Step
from tasks.verify import currency_findings, verify
from tests.conftest import ROOT
from tests.factories import add_catalog, add_order

UNSUPPORTED = ("no money thresholds for it in configs/verification.yaml risk.max_order_value "
               "and configs/packing.yaml")


def line(price: str, sku: str = "S") -> LineFacts:
    return LineFacts(1, sku, frozenset(), None, 0, Decimal(price))


def high_value(cfg, price: str, currency: str) -> bool:
    rules = [r for r in cfg.packing.rules if r.name == "high_value"]
    return bool(matched_rules(rules, [line(price)], currency))


# ---------------------------------------------------------------- config, checked at load


def test_a_bare_amount_or_a_bad_currency_code_is_refused(cfg):
    raw = cfg.packing.model_dump(mode="json")
    for bad in ("300", {"usd": "300"}, {"USD": "-1"}, {"USD": "NaN"}):
        with pytest.raises(ValidationError):
            PackingConfig.model_validate({**raw, "insurance": {"order_value_threshold": bad}})


def test_a_currency_only_some_money_rules_know_is_refused(cfg, tmp_path):
    raw = cfg.packing.model_dump(mode="json")
    raw["insurance"]["order_value_threshold"]["JPY"] = "45000"  # min_unit_price has no JPY
    with pytest.raises(ValidationError, match="rule high_value: min_unit_price currencies"):
        PackingConfig.model_validate(raw)
    folder = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", folder)
    path = folder / "verification.yaml"
    data = yaml.safe_load(path.read_text())
    data["risk"]["max_order_value"]["JPY"] = 380000  # packing.yaml has no JPY
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"\['AUD', 'CAD', 'EUR', 'GBP', 'JPY', 'USD'\]"):
        load_config(folder)


# ---------------------------------------------------------------- packing rules


def test_thresholds_compare_amounts_in_the_orders_own_currency(cfg):
    assert high_value(cfg, "630.00", "INR") is False  # ₹630 ≈ US$7.50: no INR thresholds
    assert high_value(cfg, "459.99", "EUR") is False
    assert high_value(cfg, "460.00", "EUR") is True
    assert high_value(cfg, "500.00", "USD") is True
    rules = cfg.packing.insurance
    hkd = insurance(Order(currency="HKD", subtotal=Decimal("374.00")), [], rules)
    assert hkd == {"insured": False, "insured_value": "0.00", "insurance_reasons": [],
                   "value_rules_skipped": "no money thresholds for HKD"}
    eur = insurance(Order(currency="EUR", subtotal=Decimal("280.01")), [], rules)
    assert eur["insurance_reasons"] == ["goods value above 280 EUR"]
    assert insurance(Order(currency="EUR", subtotal=Decimal("280")), [], rules)["insured"] is False


def test_zero_decimal_yen_is_judged_in_whole_yen():
    rules = InsuranceRules(order_value_threshold={"USD": "300", "JPY": "45000"})
    below = insurance(Order(currency="JPY", subtotal=Decimal("44800")), [], rules)
    assert (below["insured"], below["insured_value"]) == (False, "0")
    above = insurance(Order(currency="JPY", subtotal=Decimal("46500")), [], rules)
    assert (above["insured_value"], above["insurance_reasons"]) == (
        "46500", ["goods value above 45000 JPY"])


# ---------------------------------------------------------------- verification


def test_an_order_in_a_currency_without_thresholds_is_held_not_judged_in_dollars(
    engine, runtime, now
):
    with session_scope(engine) as session:
        add_catalog(session, now)
        orders = {
            "HKD": add_order(session, now, lines=[("TEE-1", 1, "374.00")], currency="HKD"),
            "INR": add_order(session, now, lines=[("TEE-1", 1, "630.00")], currency="INR"),
            "JPY": add_order(session, now, lines=[("TEE-1", 1, "4500")], currency="JPY"),
            "EUR": add_order(session, now, lines=[("TEE-1", 2, "24.50")], currency="EUR"),
        }
        ids = {code: o.id for code, o in orders.items()}
    with session_scope(engine) as session:
        result = verify(session, list(ids.values()), now, runtime)
    assert (result.advanced, result.held, result.details) == (1, 3, {"currency_unsupported": 3})
    with session_scope(engine) as session:
        stored = {o.currency: o for o in session.scalars(select(Order))}
        assert stored["EUR"].state == "verified"
        for code in ("HKD", "INR", "JPY"):
            assert stored[code].hold_reason == f"currency_unsupported: {code} ({UNSUPPORTED})"


def test_a_currency_with_thresholds_passes_and_its_own_limit_applies(cfg):
    risk = cfg.verification.risk
    with_yen = cfg.verification.model_copy(update={"risk": risk.model_copy(
        update={"max_order_value": {**risk.max_order_value, "JPY": Decimal("380000")}})})
    assert currency_findings(Order(currency="JPY"), with_yen) == []
    assert [str(f) for f in currency_findings(Order(currency=None), with_yen)] == [
        f"currency_unsupported: none ({UNSUPPORTED})"]


# ---------------------------------------------------------------- nothing to ship


def packed_order(session, now, requires_shipping: bool, **fields) -> Order:
    order = add_order(session, now, lines=[("GIFT-50", 1, "50.00")], state="packed",
                      step="confirm", shipping_address=None, **fields)
    order.lines[0].requires_shipping = requires_shipping
    order.lines[0].gift_card = not requires_shipping
    session.flush()
    return order


def test_a_paid_order_with_nothing_to_ship_completes_at_confirmation(engine, runtime, now):
    with session_scope(engine) as session:
        digital = packed_order(session, now, requires_shipping=False).id
        authorized = packed_order(session, now, False, financial_status="authorized").id
        parcel = add_order(session, now, state="packed", step="confirm").id
    with session_scope(engine) as session:
        result = confirm(session, [digital, authorized, parcel], now, runtime)
    assert (result.advanced, result.details["completed_without_shipping"]) == (3, 1)
    with session_scope(engine) as session:
        result = confirm(session, [digital, authorized, parcel], now, runtime)
        assert (result.advanced, result.skipped) == (0, 3)  # a rerun changes nothing
    with session_scope(engine) as session:
        state = {o.id: (o.state, o.delivered_at) for o in session.scalars(select(Order))}
        steps = {(s.order_id, s.name): s.due_at for s in session.scalars(select(Step))}
    assert state == {digital: ("delivered", now), authorized: ("confirmed", None),
                     parcel: ("confirmed", None)}
    later = {name for oid, name in steps if oid == digital} - {"confirm"}
    assert later == {"review_request", "care_guide", "cross_sell", "replenishment",
                     "loyalty_earn"}  # no delivery survey: there was no parcel
    assert steps[(digital, "loyalty_earn")] == now
    # the others wait for a parcel, watched for their ship date; the digital order is not
    assert {name for oid, name in steps if oid != digital} == {"confirm", "ship_overdue"}
