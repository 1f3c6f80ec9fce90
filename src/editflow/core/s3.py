"""The one S3 client factory: every component gets its MinIO client here.

Presigned URLs handed to OA users must carry the host they can reach (the
``public_endpoint``), which is often not the in-cluster address the worker
uploads to; :func:`presigning_client` builds a client for that host so the
signature matches what the user's browser sends.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from minio import Minio

from editflow.core.settings import S3Settings


def s3_client(settings: S3Settings) -> Minio:
    """A client for the S3 API as seen from inside the platform."""
    return Minio(
        settings.endpoint,
        access_key=settings.access_key.get_secret_value(),
        secret_key=settings.secret_key.get_secret_value(),
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
        secure=parts.scheme == "https",
        region=settings.region,
    )
