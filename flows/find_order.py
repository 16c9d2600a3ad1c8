"""The find-order flow: an operator looks an order up in the Prefect UI by number, name or e-mail.

One match publishes the whole order (items, customer, address, totals, timeline, steps,
messages, documents) as the markdown artifact `order-<number>`, the one the order-journey flow
publishes too; several matches publish a short list, and none a hint, as `find-order`. The
search (tasks/store/queries.py `search_orders`) and the pages (flows/reporting.py) are the ones
`journeys find-order` prints. Reads only: the one thing it writes is its own run's parameters,
masked.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_client, get_run_logger
from prefect.runtime import flow_run

from flows.common import app_engine, in_flow_run, runtime
from flows.parameters import FindOrderRequest
from flows.reporting import masked_query, order_search, publish
from tasks.store.db import session_scope


@flow(name="find-order", log_prints=True)
def find_order(request: FindOrderRequest) -> dict[str, Any]:
    """Find an order by number, customer name or e-mail; show it, or the matches, as an artifact."""
    keep_query_masked(request.query)
    with session_scope(app_engine()) as session:
        page = order_search(session, request.query, runtime())
    publish(page)
    shown = masked_query(request.query)
    get_run_logger().info("find-order %s: %d order(s), artifact %s", shown, len(page.orders),
                          page.key)
    return {"query": shown, "orders": list(page.orders), "artifact": page.key}


def keep_query_masked(query: str) -> None:
    """Prefect keeps a run's parameters for good, so an e-mail address or a name typed into the
    form must not stay there (erase-customer takes an order number for the same reason): the
    run's stored request is replaced by its masked form as soon as the run starts.

    Best effort: when the API refuses, the search still runs and a warning says so. A rerun of
    this run from the UI searches for the masked text (and says it found nothing)."""
    shown = masked_query(query)
    if shown == query or not in_flow_run():
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, parameters={"request": {"query": shown}})
    except Exception:  # noqa: BLE001 - the lookup matters more; the warning tells the operator
        get_run_logger().warning("could not mask the query kept in this run's parameters",
                                 exc_info=True)
