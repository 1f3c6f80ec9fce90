"""S3 lifecycle rules: uploads, results and request records expire; weights never do.

../shared/BRIEF.md §8: inputs and results in S3 expire by lifecycle rules (30 days by
default). The operator sets them on the platform bucket at every start, so an upgrade that
changes ``operator.s3_expiry_days`` takes effect, on any S3 with the lifecycle API (MinIO,
AWS, Ceph). Rules are per prefix and named ``editflow-<what>``; rules of anyone else on the
bucket are kept. The weights prefix may share the bucket: no rule may cover it, and a
configuration in which one would is refused before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from editflow.core.errors import InvalidInputError
from editflow.core.settings import Settings

log = logging.getLogger(__name__)

RULE_PREFIX = "editflow-"


@dataclass(frozen=True)
class ExpiryRule:
    rule_id: str
    prefix: str
    days: int


def _dir(prefix: str) -> str:
    return prefix.strip("/") + "/"


def expiry_rules(settings: Settings) -> list[ExpiryRule]:
    """The rules for ``settings`` (none when ``operator.s3_expiry_days`` is 0)."""
    op = settings.operator
    if op.s3_expiry_days <= 0:
        return []
    rules = [
        ExpiryRule(f"{RULE_PREFIX}uploads", _dir(op.upload_prefix), op.s3_expiry_days),
        ExpiryRule(f"{RULE_PREFIX}results", _dir(op.result_prefix), op.s3_expiry_days),
        ExpiryRule(f"{RULE_PREFIX}records", _dir(op.record_prefix), op.s3_expiry_days),
    ]
    weights = settings.worker.weights_s3_prefix
    if weights and (settings.worker.weights_s3_bucket in (None, settings.s3.bucket)):
        for rule in rules:
            if _dir(weights).startswith(rule.prefix) or rule.prefix.startswith(_dir(weights)):
                raise InvalidInputError(
                    f"the lifecycle rule {rule.rule_id} for {rule.prefix} would expire the "
                    f"weights under worker.weights_s3_prefix {_dir(weights)}: give the weights "
                    "a prefix of their own",
                    field="worker.weights_s3_prefix",
                )
    return rules


def apply_expiry_rules(client: Any, bucket: str, rules: list[ExpiryRule]) -> None:
    """Replace editflow's rules on ``bucket`` with ``rules``, keeping everyone else's."""
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

    current = client.get_bucket_lifecycle(bucket)
    foreign = [
        r
        for r in (current.rules if current else [])
        if not (r.rule_id or "").startswith(RULE_PREFIX)
    ]
    ours = [
        Rule(
            ENABLED,
            rule_filter=Filter(prefix=rule.prefix),
            rule_id=rule.rule_id,
            expiration=Expiration(days=rule.days),
        )
        for rule in rules
    ]
    if not foreign and not ours:
        if current is not None:
            client.delete_bucket_lifecycle(bucket)
        return
    client.set_bucket_lifecycle(bucket, LifecycleConfig(foreign + ours))


def ensure_expiry(settings: Settings, client: Any) -> None:
    """Set the rules at start; an S3 without the lifecycle API is logged, not fatal (the
    operator's work does not depend on it, and the chart says how to expire by hand)."""
    rules = expiry_rules(settings)
    try:
        apply_expiry_rules(client, settings.s3.bucket, rules)
    except Exception as exc:  # S3Error(NotImplemented), AccessDenied, ...
        log.warning(
            "could not set the bucket's lifecycle rules: %s",
            exc,
            extra={"bucket": settings.s3.bucket, "rules": [r.rule_id for r in rules]},
        )
        return
    log.info(
        "lifecycle rules set",
        extra={"bucket": settings.s3.bucket, "rules": {r.prefix: r.days for r in rules}},
    )
