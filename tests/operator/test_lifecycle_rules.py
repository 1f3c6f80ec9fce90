"""The operator's S3 lifecycle rules on a real MinIO (issue 20 §7, ../shared/BRIEF.md §8):
uploads, results and records expire after 30 days by default, the weights prefix in the same
bucket is covered by no rule, and rules of anyone else on the bucket are kept."""

from __future__ import annotations

import uuid

import pytest
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

from editflow.core.errors import InvalidInputError
from editflow.core.s3 import s3_client
from editflow.core.settings import OperatorSettings, Settings, WorkerSettings
from editflow.devstack.stack import LocalStack
from editflow.operator.lifecycle import ensure_expiry, expiry_rules

pytestmark = [pytest.mark.platform]


def settings_for(stack: LocalStack, bucket: str, **operator: object) -> Settings:
    s3 = stack.s3_settings().model_copy(update={"bucket": bucket})
    return Settings(
        s3=s3,
        operator=OperatorSettings(**operator),
        worker=WorkerSettings(weights_s3_prefix="models"),
    )


@pytest.fixture
def bucket(stack: LocalStack):
    client = s3_client(stack.s3_settings())
    name = f"lc-{uuid.uuid4().hex[:8]}"
    client.make_bucket(name)
    yield client, name
    client.delete_bucket_lifecycle(name)
    client.remove_bucket(name)


def test_the_operator_sets_expiry_per_prefix_and_never_on_the_weights(stack, bucket) -> None:
    client, name = bucket
    theirs = Rule(
        ENABLED,
        rule_filter=Filter(prefix="backups/"),
        rule_id="their-backups",
        expiration=Expiration(days=400),
    )
    client.set_bucket_lifecycle(name, LifecycleConfig([theirs]))

    ensure_expiry(settings_for(stack, name), client)
    rules = {r.rule_id: r for r in client.get_bucket_lifecycle(name).rules}
    assert {k: (v.rule_filter.prefix, v.expiration.days) for k, v in rules.items()} == {
        "their-backups": ("backups/", 400),
        "editflow-uploads": ("uploads/", 30),
        "editflow-results": ("results/", 30),
        "editflow-records": ("gateway/edits/", 30),
    }
    for rule in rules.values():
        assert not "models/".startswith(rule.rule_filter.prefix), rule.rule_id

    # An upgrade to 7 days replaces editflow's rules and keeps theirs; 0 removes ours.
    ensure_expiry(settings_for(stack, name, s3_expiry_days=7), client)
    days = {r.rule_id: r.expiration.days for r in client.get_bucket_lifecycle(name).rules}
    assert days == {
        "their-backups": 400,
        "editflow-uploads": 7,
        "editflow-results": 7,
        "editflow-records": 7,
    }
    ensure_expiry(settings_for(stack, name, s3_expiry_days=0), client)
    assert [r.rule_id for r in client.get_bucket_lifecycle(name).rules] == ["their-backups"]


def test_a_rule_that_would_expire_the_weights_is_refused_naming_the_field() -> None:
    settings = Settings(
        operator=OperatorSettings(result_prefix="data/results"),
        worker=WorkerSettings(weights_s3_prefix="data/results/models"),
    )
    with pytest.raises(InvalidInputError) as caught:
        expiry_rules(settings)
    assert caught.value.info().field == "worker.weights_s3_prefix"
    assert "data/results/" in str(caught.value)
