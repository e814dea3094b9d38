"""A small S3 adapter: the only place that talks to S3.

* :meth:`S3Storage.read` checks the size with a HEAD request first and refuses objects over
  the limit before a single byte of them is downloaded.
* :meth:`S3Storage.put` writes bytes with content type, user metadata and tags;
  :meth:`S3Storage.delete` removes one object.
* :meth:`S3Storage.presign_post` / :meth:`S3Storage.presign_get` hand out presigned uploads and
  downloads; the POST policy carries a ``content-length-range`` so S3 itself refuses an upload
  over the limit (a presigned PUT cannot bound the size: 5 GB would land before we could say no).
* :func:`object_option_values` turns an object's ``anonymize-*`` metadata and tags into the
  flat option map that :func:`anonymizer.options.parse_options` reads.

Keys are S3 keys, never file-system paths: ``../x.jpg`` is just a key here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from ..errors import ImageTooLargeError
from ..options import METADATA_PREFIX, metadata_key, normalize_key

DEFAULT_MAX_OBJECT_BYTES = 50 * 1024 * 1024
OPTION_PREFIX = METADATA_PREFIX  # spelled by the option table (anonymizer.options)
# Who uploaded (a digest of the API caller, signed into the presigned POST): GET /results/{id}
# answers only that caller. Not an option: "anonymizer-owner" does not start with "anonymize-".
OWNER_METADATA = "anonymizer-owner"
MAX_TAGS = 10  # S3 allows at most 10 tags per object
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")


class ObjectNotFoundError(Exception):
    """The object (or that version of it) does not exist (any more)."""


class ObjectChangedError(Exception):
    """The object was overwritten after the event was sent; a newer event will follow."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD request tells about an object (no content)."""

    bucket: str
    key: str
    size: int
    etag: str  # without quotes
    version_id: str | None = None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # user metadata, keys lower-case


@dataclass(frozen=True)
class StoredObject:
    info: ObjectInfo
    data: bytes = field(repr=False)


def _strip_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"')


def tag_value(value: Any, limit: int = 256) -> str:
    """A string S3 accepts as a tag (or ASCII metadata) value: safe characters, bounded length."""
    return _TAG_UNSAFE.sub("_", str(value))[:limit]


def object_option_values(metadata: Mapping[str, str] | None, tags: Mapping[str, str] | None = None) -> dict:
    """Per-object options from ``anonymize-*`` user metadata and tags, as a flat option map.

    ``x-amz-meta-anonymize-face-effect: pixelate`` (boto3 shows it as metadata key
    ``anonymize-face-effect``) and the tag ``anonymize-face-effect=pixelate`` both become
    ``{"face.effect": "pixelate"}``; ``anonymize-targets: face`` becomes ``{"targets": "face"}``.
    Tags win over metadata because tags can be changed after the upload. Other metadata and
    tags are ignored; unknown ``anonymize-*`` keys are left in so that the parser rejects them.
    """
    values: dict[str, str] = {}
    for source in (metadata or {}), (tags or {}):
        for raw_key, value in source.items():
            key = str(raw_key).strip().lower()
            if not key.startswith(OPTION_PREFIX):
                continue
            values[option_key(key[len(OPTION_PREFIX) :])] = str(value)
    return values


def option_key(name: str) -> str:
    """``face-effect`` / ``face_effect`` / ``face.effect`` -> ``face.effect``; ``max-pixels`` -> ``max_pixels``."""
    return normalize_key(name)


def option_metadata(values: Mapping[str, str]) -> dict[str, str]:
    """The inverse of :func:`object_option_values`: ``{"face.effect": "blur"}`` ->
    ``{"anonymize-face-effect": "blur"}`` (metadata keys without the ``x-amz-meta-`` prefix)."""
    return {metadata_key(normalize_key(key)): str(value) for key, value in values.items()}


class S3Storage:
    """Thin wrapper around a boto3 S3 client; every method maps to one or two S3 calls."""

    def __init__(self, client: Any = None, *, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES):
        if client is None:
            import boto3
            from botocore.config import Config

            # SigV4 everywhere (presigned URLs included); honours AWS_ENDPOINT_URL for moto.
            client = boto3.client("s3", config=Config(signature_version="s3v4"))
        self.client = client
        self.max_object_bytes = max_object_bytes

    # -- reading ------------------------------------------------------------------------------

    def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo | None:
        """Object facts without its content; None when it does not exist."""
        kwargs = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            resp = self.client.head_object(**kwargs)
        except self.client.exceptions.ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchVersion"):
                return None
            raise
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(resp.get("ContentLength", 0)),
            etag=_strip_etag(resp.get("ETag")),
            version_id=resp.get("VersionId") or version_id,
            content_type=resp.get("ContentType"),
            metadata={str(k).lower(): v for k, v in (resp.get("Metadata") or {}).items()},
        )

    def read(
        self,
        bucket: str,
        key: str,
        *,
        version_id: str | None = None,
        etag: str | None = None,
        max_bytes: int | None = None,
    ) -> StoredObject:
        """Download the CURRENT content of an object whose size was checked first.

        Raises ImageTooLargeError (before downloading) when the object is over ``max_bytes``,
        ObjectNotFoundError when it is gone, and ObjectChangedError when the event's
        ``version_id`` (versioned bucket) or ``etag`` is no longer the current one: the object was
        overwritten after the event, the newer event will publish the newer content, and an older
        version must not overwrite its result.
        """
        limit = self.max_object_bytes if max_bytes is None else max_bytes
        info = self.head(bucket, key)  # the current version
        if info is None:
            raise ObjectNotFoundError(f"s3://{bucket}/{key} does not exist")
        if version_id and info.version_id != version_id:
            raise ObjectChangedError(f"s3://{bucket}/{key} has a newer version than the event's")
        if etag and not version_id and _strip_etag(etag) != info.etag:
            raise ObjectChangedError(f"s3://{bucket}/{key} was overwritten since the event")
        _check_size(info.size, limit)
        kwargs = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        else:
            kwargs["IfMatch"] = f'"{info.etag}"'  # the very content whose size we checked
        try:
            resp = self.client.get_object(**kwargs)
        except self.client.exceptions.ClientError as exc:
            code = _error_code(exc)
            if code in ("PreconditionFailed", "412"):
                raise ObjectChangedError(f"s3://{bucket}/{key} changed during the read") from None
            if code in ("404", "NoSuchKey", "NoSuchVersion"):
                raise ObjectNotFoundError(f"s3://{bucket}/{key} does not exist") from None
            raise
        body = resp["Body"]
        try:
            data = body.read(limit + 1)  # never more than the limit, whatever HEAD said
        finally:
            body.close()
        _check_size(len(data), limit)
        return StoredObject(info=info, data=data)

    def read_json(self, bucket: str, key: str, *, max_bytes: int = 5 * 1024 * 1024) -> Any:
        """A small JSON object (e.g. a report); None when it does not exist."""
        try:
            obj = self.read(bucket, key, max_bytes=max_bytes)
        except ObjectNotFoundError:
            return None
        return json.loads(obj.data)

    def get_tags(self, bucket: str, key: str, *, version_id: str | None = None) -> dict[str, str]:
        kwargs = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        resp = self.client.get_object_tagging(**kwargs)
        return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}

    # -- writing ------------------------------------------------------------------------------

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        cache_control: str | None = None,
    ) -> dict:
        """Write one object in a single PUT (content, content type, metadata and tags together)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data, "ContentType": content_type}
        if metadata:
            kwargs["Metadata"] = {str(k): tag_value(v, 1024) for k, v in metadata.items()}
        if tags:
            kwargs["Tagging"] = urlencode({k: tag_value(v) for k, v in list(tags.items())[:MAX_TAGS]})
        if cache_control:
            kwargs["CacheControl"] = cache_control
        return self.client.put_object(**kwargs)

    def delete(self, bucket: str, key: str, *, version_id: str | None = None) -> None:
        """Delete one object (no error when it does not exist); with ``version_id``, that version
        for good (in a versioned bucket a plain delete only hides the data behind a delete marker)."""
        kwargs = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        self.client.delete_object(**kwargs)

    def put_json(self, bucket: str, key: str, value: Any, **kwargs: Any) -> dict:
        data = json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        return self.put(bucket, key, data, content_type="application/json", **kwargs)

    def add_tags(self, bucket: str, key: str, tags: Mapping[str, str], *, version_id: str | None = None) -> None:
        """Merge tags into an object's tag set (S3 replaces the whole set, so read it first)."""
        merged = self.get_tags(bucket, key, version_id=version_id)
        merged.update({k: tag_value(v) for k, v in tags.items()})
        kwargs: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "Tagging": {"TagSet": [{"Key": k, "Value": v} for k, v in list(merged.items())[:MAX_TAGS]]},
        }
        if version_id:
            kwargs["VersionId"] = version_id
        self.client.put_object_tagging(**kwargs)

    # -- presigned URLs -----------------------------------------------------------------------

    def presign_post(
        self,
        bucket: str,
        key: str,
        *,
        max_bytes: int,
        expires: int = 900,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[str, dict[str, str]]:
        """A presigned POST (browser-form upload): the URL and the form fields to send before the file.

        The signed policy pins the key and every ``x-amz-meta-*`` field to exactly these values
        and holds the size to ``1..max_bytes`` bytes: S3 refuses a bigger (or empty) file with
        ``EntityTooLarge`` before storing it, so the size limit holds at upload time.
        """
        fields = {f"x-amz-meta-{k}": str(v) for k, v in (metadata or {}).items()}
        conditions: list[Any] = [{name: value} for name, value in fields.items()]
        conditions.append(["content-length-range", 1, int(max_bytes)])
        post = self.client.generate_presigned_post(
            bucket, key, Fields=dict(fields), Conditions=conditions, ExpiresIn=expires
        )
        return post["url"], {str(k): str(v) for k, v in post["fields"].items()}

    def presign_get(self, bucket: str, key: str, *, expires: int = 900, content_type: str | None = None) -> str:
        params = {"Bucket": bucket, "Key": key}
        if content_type:
            params["ResponseContentType"] = content_type
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise ImageTooLargeError(f"object is {size} bytes; the limit is {limit} bytes (MAX_OBJECT_BYTES)")


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
