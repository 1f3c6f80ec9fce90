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
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from minio import MinioAdmin
from minio.credentials import StaticProvider
from minio.error import MinioAdminException

from editflow.core.settings import S3Settings
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


def policy_document(prefix: str, bucket: str) -> str:
    """The policy as JSON, for ``mc admin policy create``."""
    return json.dumps(read_only_policy(bucket=bucket, prefix=prefix), indent=2)
