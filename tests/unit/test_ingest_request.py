"""The ingest form: a file on the worker, the file pasted into the form, or a file in S3 —
exactly one, the pasted one at most 5 MB — each read the same way."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.intake import local_copy
from flows.parameters import UPLOAD_LIMIT_BYTES, IngestRequest
from tasks.intake.writers import read
from tests.conftest import FIXTURES

ORDERS_CSV = FIXTURES / "orders.csv"


@pytest.mark.parametrize(("given", "error"), [
    ({}, "exactly one of.*given: none"),
    ({"source": "a.csv", "text": "x"}, "exactly one of.*given: source, text"),
    ({"text": "é" * (UPLOAD_LIMIT_BYTES // 2 + 1)},
     r"pasted file has 5,000,002 bytes; at most 5,000,000 \(5 MB\)"),
    ({"s3_url": "https://bucket/key"}, "should match pattern"),
])
def test_one_input_exactly_and_a_pasted_file_of_at_most_5_mb(given, error):
    with pytest.raises(ValidationError, match=error):
        IngestRequest(kind="orders", **given)


def external_ids(path) -> set[str]:
    return {getattr(record, "external_id", None) for record in read("orders", path, None)}


def test_a_pasted_file_reads_as_the_file_would(tmp_path):
    request = IngestRequest(kind="orders", text=ORDERS_CSV.read_text().rstrip("\n"))

    with local_copy(request) as path:
        assert path.name == "pasted-orders.txt"
        assert external_ids(path) == external_ids(ORDERS_CSV)
    assert not path.exists()  # a temporary copy only


def test_a_file_in_s3_is_read_from_its_url(s3_server, monkeypatch):
    from flows import common
    from tasks.settings import get_settings

    monkeypatch.setenv("JOURNEYS_S3_ENDPOINT_URL", s3_server.endpoint_url)
    for cached in (get_settings, common.runtime):
        cached.cache_clear()
    bucket = s3_server.create_bucket("drops")
    s3_server.client().upload_file(str(ORDERS_CSV), bucket, "in/orders.csv")
    try:
        with local_copy(IngestRequest(kind="orders", s3_url=f"s3://{bucket}/in/orders.csv")
                        ) as path:
            assert external_ids(path) == external_ids(ORDERS_CSV)
    finally:
        for cached in (get_settings, common.runtime):
            cached.cache_clear()
