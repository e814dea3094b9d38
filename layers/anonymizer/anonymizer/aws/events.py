"""Completion events: one EventBridge event per processed object, for event-driven pipelines.

A pipeline learns that an object is done from an event instead of polling the output bucket:

* ``Object Anonymized`` — sent AFTER the anonymized image (and its report) are written, never
  before: whoever receives it can read the output. Detail: input and output bucket/key/version,
  counts per class, model versions, timings, the report key; boxes only when the deployment
  asks for them (``EVENT_INCLUDE_BOXES=true``).
* ``Object Failed`` — the object cannot be anonymized as it is (corrupt, unsupported, too large,
  bad per-object options): error code and message. Transient failures send nothing (they are
  retried; the ones that never succeed end in the DLQ, whose alarm fires).

Source ``anonymizer``; the detail's JSON Schema is ``docs/events/object-event.schema.json``.
No event carries image content. Events go to ``EVENT_BUS_NAME`` (``default`` or a named bus);
without that variable no event is sent (local runs, tests that do not ask for them).

Exactly once from the pipeline's point of view: the S3 function and the backfill function call
:func:`anonymizer.aws.s3_flow.process_object` inside their idempotent section, so a redelivered
SQS message or a retried Batch Operations task returns the stored summary and sends nothing. A
failed ``PutEvents`` raises: the record fails and is retried, and the retry sends the event.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

SOURCE = "anonymizer"
ANONYMIZED = "Object Anonymized"
FAILED = "Object Failed"
DETAIL_VERSION = "1"
MAX_DETAIL_BYTES = 200 * 1024  # PutEvents allows 256 KB per entry, envelope included
MAX_MESSAGE_CHARS = 1024
TRIGGERS = ("s3", "eventbridge", "backfill", "api")


class EventPublishError(RuntimeError):
    """EventBridge did not accept an event (the record fails and is retried)."""


def trigger_of(event_name: str | None) -> str:
    """Which door an object came through, from :attr:`ObjectRef.event_name`."""
    name = event_name or ""
    if name.startswith("Backfill"):
        return "backfill"
    if name.startswith("Object Created"):
        return "eventbridge"
    return "s3"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def anonymized_detail(
    sidecar: Mapping[str, Any],
    *,
    report_key: str,
    output_version_id: str | None = None,
    output_etag: str | None = None,
    trigger: str = "s3",
    include_boxes: bool = False,
) -> dict[str, Any]:
    """The ``Object Anonymized`` detail, built from the sidecar report :mod:`.s3_flow` writes."""
    source = sidecar.get("source", {})
    output = sidecar.get("output", {})
    report = sidecar.get("report", {}) or {}
    timings = {str(k): float(v) for k, v in (report.get("timings_ms") or {}).items()}
    if sidecar.get("latency_ms") is not None:
        timings["object_total"] = float(sidecar["latency_ms"])
    detail: dict[str, Any] = {
        "version": DETAIL_VERSION,
        "status": "ok",
        "trigger": trigger,
        "time": _now(),
        "anonymizer_version": str(sidecar.get("anonymizer_version", "")),
        "input": _object(source.get("bucket"), source.get("key"), source.get("version_id"), source.get("etag")),
        "output": {
            **_object(output.get("bucket"), output.get("key"), output_version_id, output_etag),
            "content_type": output.get("content_type"),
            "size": output.get("size"),
        },
        "report_key": report_key,
        "counts": {str(k): int(v) for k, v in (sidecar.get("counts") or {}).items()},
        "models": {str(k): str(v) for k, v in (sidecar.get("models") or {}).items()},
        "timings_ms": timings,
    }
    if source.get("size") is not None:
        detail["input"]["size"] = int(source["size"])
    if include_boxes:
        detail["detections"] = [
            {"label": d.get("label"), "score": d.get("score"), "box": d.get("box")}
            for d in report.get("detections") or []
        ]
        if len(json.dumps(detail)) > MAX_DETAIL_BYTES:  # a crowd: counts stay, boxes go to the report
            detail.pop("detections")
            detail["detections_truncated"] = True
    return detail


def failed_detail(
    *, bucket: str, key: str, version_id: str | None, etag: str | None, code: str, message: str, trigger: str = "s3"
) -> dict[str, Any]:
    """The ``Object Failed`` detail: which object, and why (code and message; never content)."""
    return {
        "version": DETAIL_VERSION,
        "status": "failed",
        "trigger": trigger,
        "time": _now(),
        "input": _object(bucket, key, version_id, etag),
        "error": {"code": code, "message": str(message)[:MAX_MESSAGE_CHARS]},
    }


def _object(bucket: Any, key: Any, version_id: Any, etag: Any) -> dict[str, Any]:
    return {
        "bucket": str(bucket or ""),
        "key": str(key or ""),
        "version_id": str(version_id) if version_id else None,
        "etag": str(etag).strip('"') if etag else None,
    }


class EventPublisher:
    """Sends completion events to one EventBridge bus (one ``PutEvents`` call per event)."""

    def __init__(self, bus_name: str = "default", *, client: Any = None, include_boxes: bool = False):
        self._client = client
        self.bus_name = bus_name
        self.include_boxes = include_boxes

    @property
    def client(self) -> Any:
        """The EventBridge client, created on first use (honours AWS_ENDPOINT_URL, e.g. moto)."""
        if self._client is None:
            import boto3

            self._client = boto3.client("events")
        return self._client

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EventPublisher | None:
        """``EVENT_BUS_NAME`` (unset or empty: no events), ``EVENT_INCLUDE_BOXES`` (``true``/``false``)."""
        env = os.environ if env is None else env
        bus = (env.get("EVENT_BUS_NAME") or "").strip()
        if not bus:
            return None
        boxes = (env.get("EVENT_INCLUDE_BOXES") or "false").strip().lower() in ("1", "true", "yes")
        return cls(bus, include_boxes=boxes)

    def publish(self, detail_type: str, detail: Mapping[str, Any]) -> str:
        """Send one event; returns its id. Raises :class:`EventPublishError` when it was not accepted."""
        entry = {
            "Source": SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(detail, default=str, separators=(",", ":")),
            "EventBusName": self.bus_name,
        }
        try:
            response = self.client.put_events(Entries=[entry])
        except Exception as exc:  # network, throttling, permissions: the record is retried
            raise EventPublishError(f"PutEvents to {self.bus_name} failed: {exc}") from exc
        (result,) = response.get("Entries") or [{}]
        if response.get("FailedEntryCount") or "EventId" not in result:
            why = f"{result.get('ErrorCode')} {result.get('ErrorMessage')}"
            raise EventPublishError(f"PutEvents to {self.bus_name} refused the event: {why}")
        return result["EventId"]

    def object_anonymized(
        self,
        sidecar: Mapping[str, Any],
        *,
        report_key: str,
        put_response: Mapping[str, Any] | None = None,
        trigger: str = "s3",
    ) -> str:
        """Announce a published image (call only after its PUT succeeded)."""
        put_response = put_response or {}
        detail = anonymized_detail(
            sidecar,
            report_key=report_key,
            output_version_id=put_response.get("VersionId"),
            output_etag=put_response.get("ETag"),
            trigger=trigger,
            include_boxes=self.include_boxes,
        )
        return self.publish(ANONYMIZED, detail)

    def object_failed(
        self,
        *,
        bucket: str,
        key: str,
        version_id: str | None,
        etag: str | None,
        error: BaseException,
        trigger: str = "s3",
    ) -> str:
        """Announce an object that cannot be anonymized as it is."""
        detail = failed_detail(
            bucket=bucket,
            key=key,
            version_id=version_id,
            etag=etag,
            code=str(getattr(error, "code", "error")),
            message=str(error),
            trigger=trigger,
        )
        return self.publish(FAILED, detail)

    def object_failed_once(self, storage: Any, ref: Any, error: BaseException) -> str | None:
        """Announce a PERMANENT failure (4xx-like error) of ``ref`` unless it was announced already.

        Call it before the input is tagged failed (:func:`.s3_flow.mark_failed`): an input that
        already carries ``anonymizer-status=failed`` with the same error code was announced by an
        earlier attempt (an SQS redelivery, a rerun backfill), so the pipeline hears of it once.
        Transient errors (5xx-like) are retried and announce nothing. Best effort: a failed
        announcement never hides the object's own error.
        """
        if getattr(error, "http_status", 500) >= 500:
            return None
        code = str(getattr(error, "code", "error"))
        try:
            tags = storage.get_tags(ref.bucket, ref.key, version_id=ref.version_id)
        except Exception:  # noqa: BLE001 - cannot tell: announce
            tags = {}
        if tags.get("anonymizer-status") == "failed" and tags.get("anonymizer-error") == code:
            return None
        try:
            return self.object_failed(
                bucket=ref.bucket,
                key=ref.key,
                version_id=ref.version_id,
                etag=ref.etag,
                error=error,
                trigger=trigger_of(getattr(ref, "event_name", None)),
            )
        except EventPublishError:
            return None
