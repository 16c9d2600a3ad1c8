"""The ingest flow reads its file from s3:// as well as from a path (real SeaweedFS)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from flows.parameters import IngestRequest
from tasks.archive import ArchiveError
from tasks.store.db import session_scope
from tasks.store.models import Order
from tests.conftest import FIXTURES


@pytest.fixture
def s3_inputs(s3_server, flow_env, monkeypatch):
    """A bucket holding the CSV fixture; the flows' settings point at the S3 endpoint."""
    monkeypatch.setenv("JOURNEYS_S3_ENDPOINT_URL", s3_server.endpoint_url)
    flow_env.runtime.cache_clear()
    from tasks.settings import get_settings

    get_settings.cache_clear()
    bucket = s3_server.create_bucket("inputs")
    s3_server.client().upload_file(str(FIXTURES / "orders.csv"), bucket, "drops/orders.csv")
    return bucket


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_orders_are_ingested_from_an_s3_url(engine, s3_inputs, now):
    from flows.intake import ingest

    counts = ingest(IngestRequest(kind="orders", source=f"s3://{s3_inputs}/drops/orders.csv",
                                  as_of=now))

    assert counts["accepted"] >= 2
    with session_scope(engine) as session:
        ids = set(session.scalars(select(Order.external_id)))
    assert {"7001", "7002"} <= ids


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_missing_s3_object_is_one_clear_error(engine, s3_inputs, now):
    from flows.intake import ingest

    with pytest.raises(ArchiveError, match="download s3://.*/drops/nope.csv failed"):
        ingest(IngestRequest(kind="orders", source=f"s3://{s3_inputs}/drops/nope.csv", as_of=now))
