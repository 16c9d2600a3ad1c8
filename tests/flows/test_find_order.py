"""Finding an order: by number, name or e-mail, in the Prefect UI (find-order) and the terminal.

The search runs on SQLite and PostgreSQL; the flow runs on the test Prefect server and its
artifact is read back from the server, as the UI would show it.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from typer.testing import CliRunner

from flows.parameters import FindOrderRequest
from flows.reporting import document_link, order_search
from tasks.archive import S3Store
from tasks.store.db import session_scope
from tasks.store.models import Artifact, Message, OrderEvent
from tasks.store.queries import search_orders
from tests.factories import add_customer, add_order

HOSTILE_HOLD = "high value: 4706.00 USD > 2500; line_items[0].price [x](javascript:alert(1))"


def seed(session, now) -> dict[str, str]:
    """Ada (two orders, one placed with a work address), Grace (one); returns their numbers."""
    ada = add_customer(session, now, "ada@example.com")
    grace = add_customer(session, now, "grace.h@navy.example", first_name="Grace")
    grace.last_name = "Hopper"
    first = add_order(session, now, [("TEE-1", 2, "25.00"), ("MUG-1", 1, "18.00")],
                      customer=ada, email="ada.work@example.com", state="on_hold",
                      hold_reason=HOSTILE_HOLD, placed_at=now - timedelta(days=2))
    first.lines[0].variant_title = "M / Blue"
    second = add_order(session, now, customer=ada, email="ada@example.com",
                       placed_at=now - timedelta(days=1))
    third = add_order(session, now, customer=grace, email="grace.h@navy.example",
                      placed_at=now - timedelta(hours=1))
    return {"first": first.name, "second": second.name, "third": third.name}


def numbers(session, query: str, limit: int = 10) -> list[str]:
    return [order.name for order in search_orders(session, query, limit)]


def test_search_by_number_email_or_part_of_a_name(engine, now):
    with session_scope(engine) as session:
        n = seed(session, now)
    with session_scope(engine) as session:
        assert numbers(session, n["first"]) == numbers(session, n["first"][1:]) == [n["first"]]
        assert numbers(session, " ADA.WORK@Example.COM ") == [n["first"]]  # the order's address
        assert numbers(session, "ada@example.com") == [n["second"], n["first"]]  # newest first
        assert numbers(session, "ada lov") == numbers(session, "LOVELACE") == [n["second"],
                                                                               n["first"]]
        assert numbers(session, "hopper") == [n["third"]]
        assert numbers(session, "ada hopper") == []  # every word, in one customer's names
        assert numbers(session, "a_a") == numbers(session, "%") == []  # no LIKE wildcards
        assert numbers(session, "a", limit=2) == [n["third"], n["second"]]
        assert numbers(session, "   ") == []


@pytest.fixture
def found(engine, flow_env, now, tmp_path):
    """The store with Ada's and Grace's orders, a timeline event, a sent mail and a document."""
    with session_scope(engine) as session:
        n = seed(session, now)
        first = next(o for o in search_orders(session, n["first"], 1))
        bundle = f"file://{tmp_path}/artifacts/documents/2026/11/16/pack-ab12.zip"
        session.add_all([
            OrderEvent(order_id=first.id, at=now, kind="state", from_state="received",
                       to_state="on_hold", actor="journeys", detail={}),
            Message(effect_key="k1", order_id=first.id, template="confirmation", version=1,
                    msg_class="transactional", to_addr="ada.work@example.com", message_id="<m1>",
                    status="sent", not_before=now, created_at=now, sent_at=now),
            Artifact(effect_key="k2", order_id=first.id, kind="packing_slip",
                     ref=f"{bundle}#{first.id}/packing_slip.html", sha256="0" * 64, size=1,
                     created_at=now)])
    return n | {"bundle": bundle.removeprefix("file://"), "first_id": first.id}


def run_find_order(flow_env, query: str) -> tuple[dict, str, dict]:
    """Run the flow on the test server: its result, its artifact's text, its kept parameters."""
    from flows.find_order import find_order

    state = find_order(FindOrderRequest(query=query), return_state=True)
    result, run_id = state.result(), state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[result["artifact"]]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        parameters = client.read_flow_run(run_id).parameters
    return result, artifact.data, parameters


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_one_match_is_the_whole_order_and_the_address_is_not_kept(found, flow_env):
    result, markdown, parameters = run_find_order(flow_env, "ADA.WORK@example.com")

    number = found["first"]
    assert result == {"query": "***@example.com", "orders": [number],
                      "artifact": f"order-{number[1:]}"}
    assert parameters == {"request": {"query": "***@example.com"}}
    lines = markdown.splitlines()
    assert lines[0] == f"# Order \\{number}"
    assert lines[2].startswith("Placed 16 Nov 2026 02:00 (America/Los\\_Angeles) · shopify ")
    assert ("- **State:** on\\_hold — high value: 4706.00 USD > 2500; "
            "line\\_items\\[0\\].price \\[x\\](javascript:alert(1))") in lines
    assert "- **Customer:** Ada L. · \\*\\*\\*@example.com" in lines
    assert "- **Ship to:** Ada L., • Analytical Way, Portland, OR 97209, United States" in lines
    assert "| TEE-1 | M / Blue | 2 | $25.00 | $50.00 |" in lines
    assert "| MUG-1 | MUG-1 | 1 | $18.00 | $18.00 |" in lines
    assert "| Shipping | $5.00 |" in lines and "| **Total** | **$73.00** |" in lines
    assert "| 18 Nov 2026 02:00 | state | received | on\\_hold | journeys |" in lines
    assert "| verify | pending | 18 Nov 2026 02:00 |  |" in lines
    assert "| confirmation | sent | 18 Nov 2026 02:00 |  |" in lines
    assert (f"- packing\\_slip: ` {found['bundle']} ` (the file ` {found['first_id']}/"
            "packing_slip.html ` in its batch's zip)") in lines
    assert "Lovelace" not in markdown and "ada.work" not in markdown


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_several_matches_are_a_short_list_and_the_name_is_kept_as_initials(found, flow_env):
    result, markdown, parameters = run_find_order(flow_env, "ada LOV")

    assert result["orders"] == [found["second"], found["first"]]
    assert parameters == {"request": {"query": "A. L."}}
    assert markdown.splitlines()[:3] == ["# Orders matching “A. L.”", "",
                                         "2 orders, newest first. Search for one number to see "
                                         "it in full."]
    assert (f"| \\{found['second']} | 17 Nov 2026 02:00 | Ada L. · \\*\\*\\*@example.com | "
            "$30.00 | received |") in markdown
    assert f"| \\{found['first']} | 16 Nov 2026 02:00 |" in markdown


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_terminal_prints_the_same_page_and_a_miss_says_how_to_search(found, flow_env, engine):
    from flows.cli import app

    out = CliRunner().invoke(app, ["find-order", found["first"], "--markdown"])
    with session_scope(engine) as session:
        page = order_search(session, found["first"], flow_env.runtime())
        miss = order_search(session, "Zed", flow_env.runtime())
    assert out.exit_code == 0 and out.stdout.strip() == page.markdown.strip()
    rendered = CliRunner().invoke(app, ["find-order", found["first"]]).stdout
    assert "high value: 4706.00 USD > 2500; line_items[0].price [x](javascript:alert(1))" in \
        " ".join(rendered.split())  # escapes rendered away, every character there
    assert (miss.key, miss.orders) == ("find-order", ())
    assert miss.markdown.startswith("# No order matches “Z.”")


def test_an_s3_document_link_is_presigned_and_downloads_it(s3_server):
    store = S3Store(s3_server.create_bucket(), "journeys", s3_server.endpoint_url)
    refs = store.put_bundle("documents/2026/11/18/pack-1.zip", {"1/invoice.html": b"<p>hi</p>"})
    label = store.put("labels/RMA-1.pdf", b"%PDF-1.7", "application/pdf")

    bundle_link = document_link(refs["1/invoice.html"], SimpleNamespace(archive=store))
    label_link = document_link(label, SimpleNamespace(archive=store))

    assert bundle_link.endswith(" (the file ` 1/invoice.html ` in its batch's zip)")
    bundle_url = bundle_link.removeprefix("[download](").split(")")[0]
    assert httpx.get(bundle_url).content == store.get(refs["1/invoice.html"].split("#")[0])
    assert httpx.get(label_link.removeprefix("[download](").removesuffix(")")).content == \
        b"%PDF-1.7"
    assert "X-Amz-Expires=86400" in bundle_url
