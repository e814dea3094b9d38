"""One S3 object through the anonymizer: read, anonymize in memory, publish.

Input bucket --(ObjectCreated)--> SQS --> ``functions/s3_anonymize`` --> :func:`process_object`.

What gets published, in the OUTPUT bucket only (never the input bucket), under the SAME key:

* ``<key>.report.json`` — the sidecar report (source, output, counts, models, the pipeline's
  full report with every detection). Written first.
* ``<key>`` — the anonymized image, written LAST, in one PUT, with its content type,
  metadata ``anonymizer-faces`` / ``anonymizer-plates`` / ``anonymizer-version`` and tags
  ``anonymizer-status=ok``, ``anonymizer-model=<model versions>``. Nothing of the original's
  identity travels along (no ETag: it is the original's MD5).

The image is anonymized fully in memory before anything is written, so a failure raises or
returns before any image PUT: nothing is published for a failed object. Failures come in two kinds:

* **permanent** (a 4xx-like :class:`~anonymizer.errors.AnonymizerError`: not an image, too big,
  bad options): retrying cannot help, so :func:`record_failure` writes ONE failure report
  (``<key>.report.json`` with ``status: failed``, the error code and the full message), tags the
  input object with codes only (``anonymizer-status=failed``, ``anonymizer-error=<code>``), and
  the summary says ``status: failed``: the SQS record succeeds, no retry, no DLQ trip.
* **transient** (detector errors, S3 errors, anything else): raised, so the record is retried
  and, after 3 receives, lands in the DLQ (whose alarm notifies someone).

The image being the last write means: whoever sees the image can also find its report. When the
image PUT itself fails, the report just written is deleted again (best effort, see
:func:`discard_orphan_report`). With ``DELETE_ORIGINAL=true`` the input object's version is deleted
for good once its anonymized copy is published (best effort; the bucket's retention rule is the
backstop).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from .. import __version__
from ..errors import AnonymizerError, ImageTooLargeError
from ..options import Options, options_from_env, parse_options
from . import report_counts, report_models, request_option_values
from .storage import (
    DEFAULT_MAX_OBJECT_BYTES,
    OWNER_METADATA,
    ObjectChangedError,
    ObjectNotFoundError,
    S3Storage,
    object_option_values,
    tag_value,
)

REPORT_SUFFIX = ".report.json"

# Idempotency key: the object's identity. versionId when the bucket is versioned, else the
# eTag (content hash); a re-upload of different bytes under the same key is a new key.
IDEMPOTENCY_KEY_JMESPATH = "[bucket, key, version_id || etag]"


def idempotency_config():
    """One idempotency record per object version (24 h), the same for the live S3 flow and a
    backfill, so neither processes an object the other already did."""
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

    return IdempotencyConfig(
        event_key_jmespath=IDEMPOTENCY_KEY_JMESPATH,
        raise_on_no_idempotency_key=True,
        expires_after_seconds=24 * 3600,
    )


class ConfigurationError(RuntimeError):
    """The deployment is misconfigured (e.g. output bucket == input bucket)."""


@dataclass(frozen=True)
class ObjectRef:
    """One object named by an S3 event, key already URL-decoded.

    This dataclass is the idempotency payload (Powertools turns it into a dict).
    """

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    event_name: str = "ObjectCreated:Put"


@dataclass(frozen=True)
class FlowConfig:
    output_bucket: str
    defaults: Options = field(default_factory=Options)
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    delete_original: bool = False  # delete the input object's version once its copy is published
    video_state_machine: str = ""  # video keys start this state machine (anonymizer.video.steps)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FlowConfig:
        """OUTPUT_BUCKET (required), MAX_OBJECT_BYTES (default 50 MB), DELETE_ORIGINAL (``true``/
        ``false``, default false), ANONYMIZER_* defaults."""
        env = os.environ if env is None else env
        output = env.get("OUTPUT_BUCKET", "")
        if not output:
            raise ConfigurationError("OUTPUT_BUCKET is not set")
        delete = (env.get("DELETE_ORIGINAL") or "false").strip().lower()
        if delete not in ("true", "false"):
            raise ConfigurationError(f"DELETE_ORIGINAL must be true or false; got {delete!r}")
        return cls(
            output_bucket=output,
            defaults=options_from_env(env),
            max_object_bytes=int(env.get("MAX_OBJECT_BYTES") or DEFAULT_MAX_OBJECT_BYTES),
            delete_original=delete == "true",
            video_state_machine=env.get("VIDEO_STATE_MACHINE_ARN", ""),
        )


def report_key(key: str) -> str:
    """Where the sidecar report of ``key`` lives in the output bucket."""
    return key + REPORT_SUFFIX


# -- events -> object references ----------------------------------------------------------------


def refs_from_s3_event(event: Mapping[str, Any]) -> list[ObjectRef]:
    """Objects created, from an S3 event notification (``{"Records": [...]}``).

    Keys arrive URL-encoded with ``+`` for spaces and are decoded here. ``s3:TestEvent``
    (sent when notifications are configured) and non-ObjectCreated records give nothing.
    """
    from aws_lambda_powertools.utilities.data_classes import S3Event

    if not event.get("Records"):
        return []  # s3:TestEvent or an empty notification
    refs = []
    for record in S3Event(dict(event)).records:
        if not record.event_name.startswith("ObjectCreated"):
            continue
        obj = record.s3.get_object
        size = obj.get("size")
        refs.append(
            ObjectRef(
                bucket=record.s3.bucket.name,
                key=unquote_plus(obj.key),
                version_id=obj.version_id or None,
                etag=obj.etag.strip('"') or None,
                size=int(size) if size is not None else None,
                event_name=record.event_name,
            )
        )
    return refs


def refs_from_sqs_body(body: str) -> list[ObjectRef]:
    """Objects from one SQS message body: an S3 event notification, possibly inside an SNS
    envelope (S3 -> SNS -> SQS). A body that is not JSON raises ValueError (record fails)."""
    message = json.loads(body)
    if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
        message = json.loads(message["Message"])
    if not isinstance(message, dict):
        raise ValueError("SQS message body is not an S3 event notification")
    if message.get("source") == "aws.s3" and "detail" in message:  # EventBridge rule -> SQS
        return refs_from_eventbridge_event(message)
    return refs_from_s3_event(message)


def refs_from_eventbridge_event(event: Mapping[str, Any]) -> list[ObjectRef]:
    """The object of an S3 ``Object Created`` event delivered by EventBridge (S3 EventBridge
    notifications, rule -> SQS -> function); any other detail-type gives nothing.

    The key is taken as sent: AWS's example events carry the key itself, not the URL-encoded
    form of the S3 notifications (moto sends it so too), but Powertools' EventBridge data class
    decodes it. Both readings are served: when the key as sent does not exist and its decoded
    form differs, :func:`process_object` reads the decoded one (see :func:`decoded_ref`).
    ``version-id`` is absent (or ``null``) in an
    unversioned bucket. Same idempotency key as the S3 notification path: the same object
    version is processed once whichever door it comes through.
    """
    if event.get("detail-type") != "Object Created":
        return []
    detail = event.get("detail") or {}
    obj = detail.get("object") or {}
    bucket = (detail.get("bucket") or {}).get("name")
    if not bucket or not obj.get("key"):
        raise ValueError("EventBridge S3 event without bucket name or object key")
    version = obj.get("version-id")
    size = obj.get("size")
    return [
        ObjectRef(
            bucket=str(bucket),
            key=str(obj["key"]),
            version_id=str(version) if version and version != "null" else None,
            etag=str(obj.get("etag") or obj.get("eTag") or "").strip('"') or None,
            size=int(size) if size is not None else None,
            event_name=f"Object Created:{detail.get('reason') or 'PutObject'}",
        )
    ]


# -- the flow -----------------------------------------------------------------------------------


def decoded_ref(ref: ObjectRef) -> ObjectRef | None:
    """The EventBridge object under its URL-decoded key, when that differs from the key as sent
    (``a+b%2Bc.jpg`` -> ``a b+c.jpg``); None for S3 notifications (decoded already) and for keys
    that decode to themselves."""
    if not ref.event_name.startswith("Object Created"):
        return None
    key = unquote_plus(ref.key)
    return replace(ref, key=key) if key != ref.key else None


def process_object(
    ref: ObjectRef,
    *,
    storage: S3Storage,
    anonymizer: Any,
    config: FlowConfig,
    events: Any = None,
    key_as_sent: bool = True,
) -> dict[str, Any]:
    """Anonymize one object and publish it; returns a small JSON-able summary.

    ``events`` (an :class:`~anonymizer.aws.events.EventPublisher`, optional) hears of the
    object after its image is written (``Object Anonymized``) or when it cannot be anonymized
    (``Object Failed``); a failed ``PutEvents`` after the write raises, so the record is retried.

    ``summary["status"]`` is ``"ok"``, ``"skipped"`` (folder marker, object deleted or
    overwritten since the event) or ``"failed"`` (a permanent failure, recorded by
    :func:`record_failure`; no image published). Transient failures raise and publish nothing.
    """
    if ref.bucket == config.output_bucket:
        raise ConfigurationError("refusing to process the output bucket (OUTPUT_BUCKET == input bucket)")
    base = {"bucket": ref.bucket, "key": ref.key, "version_id": ref.version_id, "etag": ref.etag}
    if ref.key.endswith("/") and not ref.size:
        return {**base, "status": "skipped", "reason": "folder marker"}
    if config.video_state_machine:  # videos have their own function and state machine
        from ..video.start import is_video_key, start_video

        if is_video_key(ref.key):
            return start_video(config.video_state_machine, ref.bucket, ref.key, ref.version_id, ref.etag, ref.size)
    if ref.size is not None and ref.size > config.max_object_bytes:
        # The event already says it is too large: no download. One HEAD only when an EventBridge
        # key may have come URL-encoded, so that the failure is recorded under the real key.
        decoded = decoded_ref(ref) if key_as_sent else None
        if decoded is not None and storage.head(ref.bucket, ref.key, version_id=ref.version_id) is None:
            return process_object(
                decoded, storage=storage, anonymizer=anonymizer, config=config, events=events, key_as_sent=False
            )
        error = ImageTooLargeError(
            f"object is {ref.size} bytes; the limit is {config.max_object_bytes} bytes (MAX_OBJECT_BYTES)"
        )
        return record_failure(storage, ref, error, config, events=events)

    started = time.perf_counter()
    try:
        obj = storage.read(
            ref.bucket, ref.key, version_id=ref.version_id, etag=ref.etag, max_bytes=config.max_object_bytes
        )
        tags = storage.get_tags(ref.bucket, ref.key, version_id=ref.version_id)
        values = request_option_values(object_option_values(obj.info.metadata, tags), "object metadata/tags")
        options = parse_options(values, defaults=config.defaults)
        result = anonymizer.anonymize(obj.data, options)  # fully in memory, before any write
    except ObjectNotFoundError:
        decoded = decoded_ref(ref) if key_as_sent else None
        if decoded is not None:  # an EventBridge key that came URL-encoded after all
            return process_object(
                decoded, storage=storage, anonymizer=anonymizer, config=config, events=events, key_as_sent=False
            )
        return {**base, "status": "skipped", "reason": "object no longer exists"}
    except ObjectChangedError:
        return {**base, "status": "skipped", "reason": "object was overwritten; its own event follows"}
    except AnonymizerError as exc:
        if not is_permanent(exc):
            raise  # maybe transient (detector): the retry may succeed
        return record_failure(storage, ref, exc, config, events=events)
    latency_ms = round((time.perf_counter() - started) * 1000.0, 1)

    counts = report_counts(result.report)
    models = report_models(result.report)
    out_key = ref.key  # the same key: just a key in S3, never a path
    sidecar = {
        "status": "ok",
        "anonymizer_version": __version__,
        "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # no ETag: it is the original's MD5, and the output must not identify the original
        "source": {"bucket": ref.bucket, "key": ref.key, "version_id": obj.info.version_id, "size": obj.info.size},
        "owner": obj.info.metadata.get(OWNER_METADATA, ""),
        "output": {
            "bucket": config.output_bucket,
            "key": out_key,
            "content_type": result.content_type,
            "format": result.format,
            "size": len(result.data),
        },
        "counts": counts,
        "models": models,
        "options": values,
        "latency_ms": latency_ms,
        "report": result.report,
    }
    storage.put_json(config.output_bucket, report_key(out_key), sidecar, tags={"anonymizer-status": "ok"})
    try:
        put_response = storage.put(
            config.output_bucket,
            out_key,
            result.data,
            content_type=result.content_type,
            metadata={
                "anonymizer-faces": str(counts["face"]),
                "anonymizer-plates": str(counts["plate"]),
                "anonymizer-version": __version__,
            },
            tags={"anonymizer-status": "ok", "anonymizer-model": model_tag(models)},
        )
    except Exception:
        discard_orphan_report(storage, config.output_bucket, out_key)
        raise
    if events is not None:  # after the write, never before: the receiver can read the output
        from .events import trigger_of

        events.object_anonymized(
            sidecar, report_key=report_key(out_key), put_response=put_response, trigger=trigger_of(ref.event_name)
        )
    original_deleted = config.delete_original and delete_original(storage, ref, obj.info.version_id)
    return {
        **base,
        "etag": obj.info.etag,
        "version_id": obj.info.version_id,
        "status": "ok",
        "output_bucket": config.output_bucket,
        "output_key": out_key,
        "report_key": report_key(out_key),
        "content_type": result.content_type,
        "faces": counts["face"],
        "plates": counts["plate"],
        "models": models,
        "bytes_in": obj.info.size,
        "bytes_out": len(result.data),
        "latency_ms": latency_ms,
        "original_deleted": original_deleted,
    }


def model_tag(models: Mapping[str, str]) -> str:
    """``{"face": "centerface-1.0", "plate": "p-0.3"}`` -> ``face=centerface-1.0 plate=p-0.3``
    (S3 tag values allow letters, digits, spaces and ``+-=._:/@``, at most 256 characters)."""
    text = " ".join(f"{name}={version}" for name, version in sorted(models.items())) or "unknown"
    return tag_value(text)


def discard_orphan_report(storage: S3Storage, bucket: str, key: str) -> None:
    """Best effort, after the image PUT failed: delete the report just written for it, so that an
    object that ends in the DLQ leaves no ``status: ok`` report behind. Only when no image is
    published under ``key`` (an earlier publication keeps a report); any S3 error (e.g. no
    s3:GetObject/s3:DeleteObject permission on the output bucket) leaves the report in place.
    A process killed between the two PUTs cannot clean up: the retry rewrites both."""
    with contextlib.suppress(Exception):  # never mask the PUT's error
        if storage.head(bucket, key) is None:
            storage.delete(bucket, report_key(key))


def is_permanent(error: BaseException) -> bool:
    """A failure that retrying cannot fix: a 4xx-like AnonymizerError (not an image, too big, bad options)."""
    return isinstance(error, AnonymizerError) and error.http_status < 500


def record_failure(
    storage: S3Storage, ref: ObjectRef, error: AnonymizerError, config: FlowConfig, *, events: Any = None
) -> dict[str, Any]:
    """Record a permanent failure once and return the ``status: failed`` summary (no retry follows).

    Writes the failure report (``<key>.report.json`` in the output bucket, ``status: failed``, the
    error code and its full message) and tags the INPUT object with codes only
    (``anonymizer-status=failed``, ``anonymizer-error=<code>``): S3 tag values allow few characters,
    and a message squeezed into them came out garbled. Only tags change on the input (no new object
    version, no ObjectCreated event). Both writes are best effort: an S3 error leaves the other in place.
    """
    code = getattr(error, "code", "error")
    owner = ""
    with contextlib.suppress(Exception):  # who uploaded, so that GET /results/{id} answers only them
        info = storage.head(ref.bucket, ref.key, version_id=ref.version_id)
        owner = info.metadata.get(OWNER_METADATA, "") if info is not None else ""
    report = {
        "status": "failed",
        "anonymizer_version": __version__,
        "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {"bucket": ref.bucket, "key": ref.key, "version_id": ref.version_id, "size": ref.size},
        "owner": owner,
        "error": code,
        "message": str(error),
    }
    report_written = False
    with contextlib.suppress(Exception):  # best effort: the summary still says why
        storage.put_json(
            config.output_bucket,
            report_key(ref.key),
            report,
            tags={"anonymizer-status": "failed", "anonymizer-error": code},
        )
        report_written = True
    if events is not None:  # before the tags: they tell a redelivery that it was announced already
        events.object_failed_once(storage, ref, error)
    mark_failed(storage, ref, error)
    return {
        "bucket": ref.bucket,
        "key": ref.key,
        "version_id": ref.version_id,
        "status": "failed",
        "error": code,
        "message": str(error),
        "report_key": report_key(ref.key) if report_written else None,
    }


def mark_failed(storage: S3Storage, ref: ObjectRef, error: AnonymizerError) -> None:
    """Best effort: tag the INPUT object ``anonymizer-status=failed``, ``anonymizer-error=<code>``.

    Codes only: the message lives in the failure report. Only tags change (no new object version,
    no ObjectCreated event); a missing permission or any S3 error is ignored.
    """
    code = getattr(error, "code", "error")
    with contextlib.suppress(Exception):
        storage.add_tags(
            ref.bucket, ref.key, {"anonymizer-status": "failed", "anonymizer-error": code}, version_id=ref.version_id
        )


def delete_original(storage: S3Storage, ref: ObjectRef, version_id: str | None) -> bool:
    """Best effort, after publication: delete the very version that was anonymized, for good.

    Only by version id: in a bucket without versioning a delete by key could remove a newer upload
    that arrived meanwhile and was not processed yet, so nothing is deleted there.
    """
    if not version_id:
        return False
    try:
        storage.delete(ref.bucket, ref.key, version_id=version_id)
    except Exception:  # noqa: BLE001 - the retention rule deletes it later; publication stands
        return False
    return True
