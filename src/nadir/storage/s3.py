"""S3: the one way nadir makes a client, chooses credentials, lists a prefix and sets up GDAL.

Four kinds of bucket are read or written, each with its own credentials (`Access`):
- the run's storage (checkpoints, the controller's owner record, inference prefixes and scenes
  in buckets the config names): Snakemake's storage keys (SNAKEMAKE_STORAGE_S3_ACCESS_KEY /
  _SECRET_KEY, or the keys Snakemake was given), else the environment's (AWS_*, a profile, an
  instance role: boto3's chain);
- a dataset source with `anonymous: false`: the environment's credentials only;
- public data (`anonymous: true` sources, STAC assets in buckets the config does not name):
  unsigned requests, whatever the environment holds, so a user's keys never reach a bucket the
  user did not name.
Keys travel in the environment, never as arguments: they appear in no command line or log.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from enum import Enum
from urllib.parse import urlparse

STORAGE_KEY_VARIABLES = ("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", "SNAKEMAKE_STORAGE_S3_SECRET_KEY")
DEFAULT_REGION = "us-east-1"


class Access(Enum):
    """Whose credentials sign the requests to a bucket."""

    STORAGE = "storage"  # Snakemake's storage keys, else the environment's
    ENVIRONMENT = "environment"  # the environment's (boto3's chain: AWS_*, profile, role)
    ANONYMOUS = "anonymous"  # unsigned: public buckets


def storage_keys() -> tuple[str, str] | None:
    """Snakemake's S3 storage keys from the environment, or None."""
    access, secret = (os.environ.get(name) for name in STORAGE_KEY_VARIABLES)
    return (access, secret) if access and secret else None


def scene_access(anonymous: bool) -> Access:
    """How a scene (or its sidecar) in an s3:// bucket is read: unsigned when its bucket is
    not one the config names (`anonymous`), else with the storage's keys, else with the
    environment's AWS keys, else unsigned (a public bucket)."""
    if anonymous:
        return Access.ANONYMOUS
    if storage_keys():
        return Access.STORAGE
    return Access.ENVIRONMENT if os.environ.get("AWS_ACCESS_KEY_ID") else Access.ANONYMOUS


def client(endpoint: str | None = None, access: Access = Access.STORAGE,
           keys: tuple[str | None, str | None] | None = None, retries: int | None = None,
           timeout_s: float | None = None):
    """A boto3 S3 client of a session of its own (boto3's default session keeps the
    credentials it first found). `keys` overrides the storage keys of the environment;
    `retries` are botocore's (nadir adds no retry loop of its own on top, so attempts never
    multiply); `timeout_s` bounds connecting and each read."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    options: dict = {}
    if retries is not None:
        options["retries"] = {"max_attempts": retries + 1, "mode": "standard"}
    if timeout_s is not None:
        options |= {"connect_timeout": timeout_s, "read_timeout": timeout_s}
    credentials: dict = {}
    if access is Access.ANONYMOUS:
        options["signature_version"] = UNSIGNED
    elif access is Access.STORAGE:
        given = keys if keys and all(keys) else storage_keys()
        if given:
            credentials = {"aws_access_key_id": given[0], "aws_secret_access_key": given[1]}
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", DEFAULT_REGION),
        config=Config(**options), **credentials)


def split_url(url: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URL."""
    parsed = urlparse(url)
    return parsed.netloc, parsed.path.lstrip("/")


def list_objects(s3, bucket: str, prefix: str) -> Iterator[dict]:
    """Every object under a prefix, as S3 lists them (Key, ETag, Size, ...), page by page."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def error_code(error) -> str:
    """The S3 error code of a botocore ClientError ("NoSuchKey", "403", ...)."""
    return error.response.get("Error", {}).get("Code", "")


@contextlib.contextmanager
def gdal_access(location: str, endpoint: str | None, access: Access) -> Iterator[dict]:
    """GDAL's settings (yielded) for reading a remote raster, and for s3:// its credentials.

    With `Access.STORAGE` the storage keys are handed to GDAL as this process's AWS_*
    environment while the caller reads, and taken back after (never as arguments);
    `Access.ANONYMOUS` sets AWS_NO_SIGN_REQUEST, so GDAL signs nothing whatever AWS_* holds.
    """
    options: dict = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "3",
                     "GDAL_HTTP_RETRY_DELAY": "1"}
    saved: dict[str, str | None] = {}
    if location.startswith("s3://"):
        if access is Access.ANONYMOUS:
            options["AWS_NO_SIGN_REQUEST"] = "YES"
        elif access is Access.STORAGE and storage_keys():
            for name, value in zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                                   storage_keys(), strict=True):
                saved[name] = os.environ.get(name)
                os.environ[name] = value
        if endpoint:
            parsed = urlparse(endpoint)
            options |= {"AWS_S3_ENDPOINT": parsed.netloc or parsed.path,
                        "AWS_HTTPS": "NO" if parsed.scheme == "http" else "YES",
                        "AWS_VIRTUAL_HOSTING": "FALSE"}
        options.setdefault("AWS_REGION", os.environ.get("AWS_REGION", DEFAULT_REGION))
    try:
        yield options
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The storage's endpoint for the jobs that read or write it themselves (checkpoints, inference
# prefixes and scenes): set by the workflow from Snakemake's S3 storage settings, like
# NADIR_URLS (nadir.storage.urls), so that it reaches no command line and changing it reruns
# nothing.
ENDPOINT_VARIABLE = "NADIR_STORAGE_S3_ENDPOINT"


def storage_endpoint() -> str | None:
    """The S3 storage's endpoint URL the workflow runs with, or None (AWS)."""
    return os.environ.get(ENDPOINT_VARIABLE) or None
