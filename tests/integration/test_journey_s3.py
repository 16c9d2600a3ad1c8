"""The first half of the journey with the archive on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import email

from sqlalchemy import select

from tasks.confirm import confirm
from tasks.messaging.outbox import dispatch
from tasks.pack import pack
from tasks.runtime import Runtime
from tasks.store.db import session_scope
from tasks.store.models import Artifact, Message
from tasks.verify import verify
from tests.factories import add_catalog, add_order


def test_documents_and_mail_are_archived_in_s3(engine, settings, cfg, s3_server, now):
    bucket = s3_server.create_bucket()
    s3_settings = settings.model_copy(update={
        "artifacts_url": f"s3://{bucket}/journeys", "s3_endpoint_url": s3_server.endpoint_url,
    })
    rt = Runtime(settings=s3_settings, config=cfg)
    with session_scope(engine) as session:
        add_catalog(session, now)
        order_id = add_order(session, now, lines=[("MUG-1", 1, "18.00")], gift_note="<b>hi</b>").id
    for stage in (verify, pack, confirm):
        with session_scope(engine) as session:
            assert stage(session, [order_id], now, rt).advanced == 1
    with session_scope(engine) as session:
        assert dispatch(session, now, rt).sent == 1
        slip = session.scalars(select(Artifact).where(Artifact.kind == "packing_slip")).one()
        message = session.scalars(select(Message)).one()

    assert slip.ref.startswith(f"s3://{bucket}/journeys/documents/2026/11/18/")
    assert "&lt;b&gt;hi&lt;/b&gt;" in rt.archive.get(slip.ref).decode()
    assert email.message_from_bytes(rt.archive.get(message.artifact_ref))["Message-ID"] == (
        message.message_id
    )
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2  # one documents bundle, one mail bundle: not an object per document
