"""The archive's IAM policies and bucket lifecycle (infra/*.json): structure, least privilege.

The placeholders are bucket `journeys-archive` and prefix `journeys/`: replace both together.
The stages' principal (iam-policy.json) never deletes; erasure (tasks/privacy.py) and the archive
reconcile (tasks/orphans.py) run under their own principal (iam-policy-erasure.json) that may
delete document and mail bundles and manifests only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import ParamValidator

ROOT = Path(__file__).resolve().parents[2]
BUCKET_ARN = "arn:aws:s3:::journeys-archive"
PREFIX = "journeys/"
ALLOWED_ACTIONS = {"s3:PutObject", "s3:GetObject", "s3:ListBucket"}
# The IAM action behind every S3 call the archive makes (HeadObject is authorised as GetObject).
ACTION_OF_CALL = {
    "put_object": "s3:PutObject",
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "delete_object": "s3:DeleteObject",
    "list_objects_v2": "s3:ListBucket",
}
ERASURE_CALLS = {"delete_object"}  # only erasure and reconcile, under their principal
DAYS_7_YEARS = 2555


def load(name: str) -> dict:
    return json.loads((ROOT / "infra" / name).read_text())


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@pytest.fixture(scope="module")
def policy() -> dict:
    return load("iam-policy.json")


@pytest.fixture(scope="module")
def erasure_policy() -> dict:
    return load("iam-policy-erasure.json")


@pytest.fixture(scope="module")
def lifecycle() -> dict:
    return load("bucket-lifecycle.json")


def allows(policy: dict) -> list[dict]:
    return [s for s in policy["Statement"] if s["Effect"] == "Allow"]


# --- IAM policy ---------------------------------------------------------------------------------


def test_policy_document_structure(policy) -> None:
    assert policy["Version"] == "2012-10-17"
    assert isinstance(policy["Statement"], list) and policy["Statement"]
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(sids) == len(set(sids))
    for statement in policy["Statement"]:
        assert statement["Effect"] in {"Allow", "Deny"}
        assert {"Action", "Resource"} <= statement.keys()
        assert not {"NotAction", "NotResource", "Principal"} & statement.keys()


def test_policy_allows_only_put_get_and_list_without_wildcards(policy) -> None:
    granted = {action for s in allows(policy) for action in as_list(s["Action"])}
    assert granted == ALLOWED_ACTIONS
    assert not any("*" in action or "?" in action for action in granted)
    assert not any("Delete" in action for action in granted)


def test_object_actions_are_scoped_to_the_prefix(policy) -> None:
    for statement in allows(policy):
        actions, resources = set(as_list(statement["Action"])), as_list(statement["Resource"])
        if actions & {"s3:PutObject", "s3:GetObject"}:
            assert actions <= {"s3:PutObject", "s3:GetObject"}
            assert resources == [f"{BUCKET_ARN}/{PREFIX}*"]


def test_listing_is_the_bucket_restricted_to_the_prefix(policy) -> None:
    (listing,) = [s for s in allows(policy) if "s3:ListBucket" in as_list(s["Action"])]
    assert as_list(listing["Action"]) == ["s3:ListBucket"]
    assert as_list(listing["Resource"]) == [BUCKET_ARN]
    prefixes = as_list(listing["Condition"]["StringLike"]["s3:prefix"])
    assert prefixes and all(p.startswith(PREFIX) for p in prefixes)


def test_insecure_transport_is_denied_for_bucket_and_objects(policy) -> None:
    """A Deny may be broad (s3:*): widening a deny only takes rights away."""
    denies = [
        s
        for s in policy["Statement"]
        if s["Effect"] == "Deny"
        and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
    ]
    assert len(denies) == 1
    assert as_list(denies[0]["Action"]) == ["s3:*"]
    assert set(as_list(denies[0]["Resource"])) == {BUCKET_ARN, f"{BUCKET_ARN}/*"}


def granted_actions(policy: dict) -> set[str]:
    return {action for s in allows(policy) for action in as_list(s["Action"])}


def test_policy_covers_every_s3_call_the_archive_makes(policy, erasure_policy) -> None:
    """Ties the policies to tasks/archive.py: a new client call must be mapped (and allowed)."""
    source = (ROOT / "tasks" / "archive.py").read_text()
    calls = set(re.findall(r"\.client\.(\w+)\(", source))
    assert calls, "no S3 client calls found in tasks/archive.py"
    assert calls <= ACTION_OF_CALL.keys(), f"unmapped S3 calls: {calls - ACTION_OF_CALL.keys()}"
    assert {ACTION_OF_CALL[c] for c in calls - ERASURE_CALLS} <= granted_actions(policy)
    erasure_needs = {"get_object", "put_object", *ERASURE_CALLS}
    assert {ACTION_OF_CALL[c] for c in erasure_needs} <= granted_actions(erasure_policy)


def test_erasure_policy_may_delete_only_bundles_and_manifests(erasure_policy) -> None:
    test_policy_document_structure(erasure_policy)
    assert granted_actions(erasure_policy) == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                               "s3:ListBucket"}
    for statement in allows(erasure_policy):
        if as_list(statement["Action"]) == ["s3:ListBucket"]:  # reconcile lists our prefix only
            assert statement["Condition"] == {"StringLike": {"s3:prefix": PREFIX + "*"}}
            continue
        assert sorted(as_list(statement["Resource"])) == [
            f"{BUCKET_ARN}/{PREFIX}documents/*", f"{BUCKET_ARN}/{PREFIX}mail/*",
            f"{BUCKET_ARN}/{PREFIX}manifests/*",
        ]
    test_insecure_transport_is_denied_for_bucket_and_objects(erasure_policy)


# --- bucket lifecycle ---------------------------------------------------------------------------


def test_lifecycle_matches_the_s3_api_shape(lifecycle) -> None:
    """Validated against botocore's own model of PutBucketLifecycleConfiguration."""
    operation = (
        botocore.session.get_session()
        .get_service_model("s3")
        .operation_model("PutBucketLifecycleConfiguration")
    )
    shape = operation.input_shape.members["LifecycleConfiguration"]
    report = ParamValidator().validate(lifecycle, shape)
    assert not report.has_errors(), report.generate_report()


def test_every_rule_is_enabled_with_an_id_and_a_prefix_inside_ours(lifecycle) -> None:
    ids = [rule["ID"] for rule in lifecycle["Rules"]]
    assert len(ids) == len(set(ids)) and all(ids)
    for rule in lifecycle["Rules"]:
        assert rule["Status"] == "Enabled"
        assert rule["Filter"]["Prefix"].startswith(PREFIX)


def test_mail_and_documents_tier_down_and_expire_after_seven_years(lifecycle) -> None:
    """Retention is a business choice, not a technical one: 7 years (2555 days) covers common
    tax and commercial record-keeping periods for invoices and customer correspondence, but some
    jurisdictions ask for longer; check before relying on it. The stages' principal has no
    s3:DeleteObject, so apart from an erasure (its own principal) this expiration is the only
    way objects leave the archive. Objects are
    written once and rarely read: STANDARD_IA after 30 days (the earliest S3 allows), GLACIER
    after 180. A GLACIER object must be restored before GetObject can read it, so reading a
    document older than 180 days is an operator task, not something a stage may do.
    """
    rules = {rule["Filter"]["Prefix"]: rule for rule in lifecycle["Rules"]}
    for prefix in (f"{PREFIX}mail/", f"{PREFIX}documents/"):
        rule = rules[prefix]
        transitions = [(t["Days"], t["StorageClass"]) for t in rule["Transitions"]]
        assert transitions == [(30, "STANDARD_IA"), (180, "GLACIER")]
        assert rule["Expiration"] == {"Days": DAYS_7_YEARS}
        assert all(rule["Expiration"]["Days"] >= days for days, _ in transitions)


def test_incomplete_multipart_uploads_are_aborted_after_seven_days(lifecycle) -> None:
    aborting = [r for r in lifecycle["Rules"] if "AbortIncompleteMultipartUpload" in r]
    assert [r["Filter"]["Prefix"] for r in aborting] == [PREFIX]
    assert aborting[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
