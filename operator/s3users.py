"""The weights reader: a MinIO user that may read (and list) the weights prefix, nothing else.

Workers in Job mode hold only their attempt's session keys (:mod:`.credentials`),
which reach one input object and one output prefix; the model weights are read
with this separate long-lived key instead (``operator.weights_secret`` ->
``EDITFLOW_WORKER__WEIGHTS_ACCESS_KEY`` / ``_SECRET_KEY``). It cannot write, so a
compromised worker cannot replace the weights every later attempt loads.

:func:`ensure_weights_reader` creates it through MinIO's admin API with the
platform's admin key (idempotent: the same call again only re-applies the
policy). The equivalent by hand, for any MinIO::

    mc admin policy create ALIAS editflow-weights-read policy.json   # read_only_policy()
    mc admin user add ALIAS <access-key> <secret-key>
    mc admin policy attach ALIAS editflow-weights-read --user <access-key>

then ``kubectl create secret generic editflow-weights --from-literal=access-key=...
--from-literal=secret-key=...`` in each EditJob namespace.

The chart does all of it by default when weights come from S3 (``models.s3Prefix`` without
``models.s3ReaderSecret``): it generates the key into ``<fullname>-weights`` in every worker
namespace, and the operator creates the user at start (:func:`provision_weights_reader`).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from minio import MinioAdmin
from minio.credentials import StaticProvider
from minio.error import MinioAdminException

from editflow.core.errors import InvalidInputError
from editflow.core.settings import S3Settings, Settings
from editflow.operator.tenancy import read_only_policy

WEIGHTS_POLICY = "editflow-weights-read"


def admin_client(s3: S3Settings) -> MinioAdmin:
    """MinIO's admin API with the platform's own (admin) key."""
    return MinioAdmin(
        endpoint=urlsplit(f"//{s3.endpoint}").netloc,
        credentials=StaticProvider(
            s3.access_key.get_secret_value(), s3.secret_key.get_secret_value()
        ),
        region=s3.region,
        secure=s3.secure,
    )


def ensure_weights_reader(
    s3: S3Settings, *, access_key: str, secret_key: str, prefix: str, bucket: str | None = None
) -> None:
    """Create (or update) the user ``access_key`` that may only read ``<bucket>/<prefix>/``."""
    admin = admin_client(s3)
    policy = read_only_policy(bucket=bucket or s3.bucket, prefix=prefix)
    admin.policy_add(WEIGHTS_POLICY, policy=policy)
    admin.user_add(access_key, secret_key)
    try:
        admin.attach_policy([WEIGHTS_POLICY], user=access_key)
    except MinioAdminException as exc:
        # Attaching a policy that is already attached is refused; the state is what we want.
        if "already" not in str(exc).lower():
            raise


def provision_weights_reader(settings: Settings) -> bool:
    """Create the chart's read-only weights user when ``operator.weights_reader_create`` says
    so (issue 20 §1: the chart creates the reader it documents). Returns whether it did.

    The key is the worker's (``worker.weights_access_key`` / ``_secret_key``, the Secret the
    chart puts in every worker namespace); the operator's admin key makes the user. Called at
    every start, so a changed ``models.s3Prefix`` re-scopes the policy on upgrade.
    """
    op, worker = settings.operator, settings.worker
    if not op.weights_reader_create:
        return False
    if not worker.weights_s3_prefix:
        raise InvalidInputError(
            "operator.weights_reader_create needs worker.weights_s3_prefix: the prefix the "
            "reader may read",
            field="worker.weights_s3_prefix",
        )
    if worker.weights_access_key is None or worker.weights_secret_key is None:
        raise InvalidInputError(
            "operator.weights_reader_create needs worker.weights_access_key and "
            "worker.weights_secret_key (the chart sets them from its weights Secret)",
            field="worker.weights_access_key",
        )
    ensure_weights_reader(
        settings.s3,
        access_key=worker.weights_access_key.get_secret_value(),
        secret_key=worker.weights_secret_key.get_secret_value(),
        prefix=worker.weights_s3_prefix,
        bucket=worker.weights_s3_bucket,
    )
    return True


def policy_document(prefix: str, bucket: str) -> str:
    """The policy as JSON, for ``mc admin policy create``."""
    return json.dumps(read_only_policy(bucket=bucket, prefix=prefix), indent=2)
