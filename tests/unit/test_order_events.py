"""Which order state changes become Prefect events, by the operator's choice."""

from flows.order_events import DEFAULT_MODE, wanted


def test_by_default_only_what_an_operator_reacts_to_is_an_event():
    assert DEFAULT_MODE == "exceptions"
    assert wanted("on_hold", DEFAULT_MODE) and wanted("cancelled", DEFAULT_MODE)
    assert not any(wanted(state, DEFAULT_MODE) for state in ("verified", "confirmed", "delivered"))


def test_all_sends_every_change_and_off_none():
    assert all(wanted(state, "all") for state in ("verified", "confirmed", "on_hold"))
    assert not any(wanted(state, "off") for state in ("confirmed", "on_hold"))
