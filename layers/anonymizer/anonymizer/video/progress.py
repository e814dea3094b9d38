"""Progress of one video job, for ``GET /results/{id}``: small JSON records in the WORK bucket.

Layout, under the job's own prefix (``jobs/<job id>/progress/``, deleted with the job's other
work objects by ``join`` and ``fail``, and expired with the work bucket):

* ``status.json`` — written only by the sequential steps (``plan`` twice, ``join`` once), so it
  is never written concurrently: phase, started_at/updated_at, segments and frames in total, and
  each segment's own frame count.
* ``seg-<index>.started`` / ``seg-<index>.done`` — one object per segment and state, written by
  that segment alone. Parallel segments never read-modify-write a shared counter (no lost
  update); the reader lists the prefix once and sums.

The records hold counts and times only: no pixels, no keys, no options.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

PHASES = ("queued", "planning", "segments", "joining", "done", "failed")
STATUS = "status.json"
_SEGMENT = re.compile(r"seg-(\d{5})\.(started|done)$")
# Share of the bar per phase: segments (the decoding and detection) are nearly all of the work.
_PLAN_PERCENT, _SEGMENTS_PERCENT, _JOIN_PERCENT = 2, 5, 95


def prefix(job_id: str) -> str:
    """Where a job's progress records live in the work bucket (inside its ``jobs/<id>/``)."""
    return f"jobs/{job_id}/progress/"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _put(s3: Any, bucket: str, key: str, body: Mapping[str, Any]) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json")


def _get(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    value = json.loads(body)
    return value if isinstance(value, dict) else None


def planning(s3: Any, bucket: str, job_id: str) -> None:
    """``plan`` began (a retried plan starts the clock again: it redoes the work)."""
    stamp = now()
    _put(s3, bucket, prefix(job_id) + STATUS, {"phase": "planning", "started_at": stamp, "updated_at": stamp})


def planned(s3: Any, bucket: str, job_id: str, frames: int, segment_frames: Sequence[int]) -> None:
    """``plan`` is done: the totals the reader turns into a percentage."""
    status = _get(s3, bucket, prefix(job_id) + STATUS) or {}
    status.update(
        phase="segments",
        updated_at=now(),
        frames_total=int(frames),
        segments_total=len(segment_frames),
        segment_frames=[int(n) for n in segment_frames],
    )
    status.setdefault("started_at", status["updated_at"])
    _put(s3, bucket, prefix(job_id) + STATUS, status)


def segment_started(s3: Any, bucket: str, job_id: str, index: int) -> None:
    _put(s3, bucket, f"{prefix(job_id)}seg-{index:05d}.started", {"index": index, "at": now()})


def segment_done(s3: Any, bucket: str, job_id: str, index: int, frames: int) -> None:
    _put(s3, bucket, f"{prefix(job_id)}seg-{index:05d}.done", {"index": index, "frames": frames, "at": now()})


def joining(s3: Any, bucket: str, job_id: str) -> None:
    """``join`` began (every segment is done: the Map only ends when all of them have)."""
    status = _get(s3, bucket, prefix(job_id) + STATUS) or {}
    status.update(phase="joining", updated_at=now())
    _put(s3, bucket, prefix(job_id) + STATUS, status)


def read(s3: Any, bucket: str, job_id: str) -> dict[str, Any] | None:
    """The job's progress as the API shows it; None when the job has written nothing yet.

    One GET (``status.json``) and one LIST per page of 1,000 records: segment records are
    counted by their names, never read.
    """
    status = _get(s3, bucket, prefix(job_id) + STATUS)
    if status is None:
        return None
    started: set[int] = set()
    done: set[int] = set()
    last = status.get("updated_at")
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix(job_id) + "seg-"}
    while True:
        page = s3.list_objects_v2(**kwargs)
        for obj in page.get("Contents", []):
            match = _SEGMENT.search(obj["Key"])
            if match:
                (done if match.group(2) == "done" else started).add(int(match.group(1)))
                stamp = obj["LastModified"].astimezone(UTC).isoformat(timespec="seconds")
                last = max(last or stamp, stamp)
        if not page.get("IsTruncated"):
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    return summarize(status, started, done, last)


def summarize(status: Mapping[str, Any], started: set[int], done: set[int], updated_at: str | None) -> dict[str, Any]:
    """The progress object of ``GET /results/{id}`` from the status record and the segment names."""
    phase = str(status.get("phase", "planning"))
    out: dict[str, Any] = {"phase": phase, "started_at": status.get("started_at"), "updated_at": updated_at}
    sizes = [int(n) for n in status.get("segment_frames") or []]
    if "segments_total" in status:
        total = int(status["segments_total"])
        finished = total if phase == "joining" else len({i for i in done if i < total})
        running = 0 if phase == "joining" else len({i for i in started - done if i < total})
        out["segments"] = {"total": total, "done": finished, "running": running}
    if "frames_total" in status:
        if phase == "joining":
            frames_done = int(status["frames_total"])
        else:
            frames_done = sum(sizes[i] for i in done if i < len(sizes))
        out["frames"] = {"total": int(status["frames_total"]), "done": frames_done}
    return out


def percent(progress: Mapping[str, Any] | None) -> int:
    """0..100 for a progress bar: planning a few percent, segments by frames done, then joining."""
    phase = (progress or {}).get("phase", "queued")
    if phase == "done":
        return 100
    if phase == "joining":
        return _JOIN_PERCENT
    if phase != "segments":
        return 0 if phase in ("queued", "failed") else _PLAN_PERCENT
    frames = progress.get("frames") or {}
    segments = progress.get("segments") or {}
    if frames.get("total"):
        share = frames["done"] / frames["total"]
    elif segments.get("total"):
        share = segments["done"] / segments["total"]
    else:
        share = 0.0
    return _SEGMENTS_PERCENT + int((_JOIN_PERCENT - _SEGMENTS_PERCENT) * min(share, 1.0))


def queued() -> dict[str, Any]:
    """The upload is in, no step has started yet (the S3 flow, then Step Functions)."""
    return {"phase": "queued"}
