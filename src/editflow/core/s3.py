"""The one S3 client factory: every component gets its MinIO client here.

Presigned URLs handed to OA users must carry the host they can reach (the
``public_endpoint``), which is often not the in-cluster address the worker
uploads to; :func:`presigning_client` builds a client for that host so the
signature matches what the user's browser sends.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from minio import Minio

from editflow.core.settings import S3Settings, WorkerSettings


def s3_client(settings: S3Settings) -> Minio:
    """A client for the S3 API as seen from inside the platform."""
    return Minio(
        settings.endpoint,
        access_key=settings.access_key.get_secret_value(),
        secret_key=settings.secret_key.get_secret_value(),
        session_token=settings.session_token.get_secret_value() if settings.session_token else None,
        secure=settings.secure,
        region=settings.region,
    )


def presigning_client(settings: S3Settings) -> Minio:
    """A client whose presigned URLs point at the public endpoint (if one is set).

    Presigning is computed locally (the region is fixed, so no network call is
    made), which is why a host the platform itself cannot reach is fine here.
    """
    if not settings.public_endpoint:
        return s3_client(settings)
    parts = urlsplit(settings.public_endpoint)
    return Minio(
        parts.netloc,
        access_key=settings.access_key.get_secret_value(),
        secret_key=settings.secret_key.get_secret_value(),
        session_token=settings.session_token.get_secret_value() if settings.session_token else None,
        secure=parts.scheme == "https",
        region=settings.region,
    )


def weights_s3_settings(worker: WorkerSettings, s3: S3Settings) -> S3Settings:
    """The S3 settings weights are read with: the read-only weights key when one is set.

    A worker in Job mode holds only its attempt's session keys, which cannot
    read the weights prefix; weights come with their own key that cannot write.
    """
    if worker.weights_access_key is None or worker.weights_secret_key is None:
        return s3
    return s3.model_copy(
        update={
            "access_key": worker.weights_access_key,
            "secret_key": worker.weights_secret_key,
            "session_token": None,
        }
    )
