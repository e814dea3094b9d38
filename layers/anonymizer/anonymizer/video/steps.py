"""The video state machine's steps (functions/video_workflow/statemachine.asl.json), as plain
functions of an event dict: ``plan`` -> ``segment`` (one per segment, a Distributed Map) ->
``join``; any failure -> ``fail``. The same functions run in Lambda (functions/video_anonymize)
and locally (:mod:`.local_run`, which walks the same definition).

Where things live: the source stays in the input bucket; parts and segment reports go to the
WORK bucket under ``jobs/<job id>/`` (never the output bucket); ``join`` writes the report and
then the video (last) to the OUTPUT bucket under the source's key, then deletes the work objects.
Fail closed: nothing reaches the output bucket before every part exists and the joined frame
count equals the plan's; ``fail`` records the failure like the image flow (failure report,
tags on the input) and deletes the work objects. The original is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .. import __version__
from ..aws.storage import OWNER_METADATA
from ..errors import AnonymizerError
from ..options import Options, options_from_env, parse_options
from . import DETECT_EVERY, io, progress
from .pipeline import VideoSettings, anonymize_segment
from .segments import DEFAULT_SEGMENT_SECONDS, JoinError, Plan, Segment, join_parts, plan_segments
from .start import (  # noqa: F401 (the steps' API)
    DEFAULT_VIDEO_MAX_BYTES,
    VIDEO_OPTION_KEYS,
    execution_input,
    is_video_key,
    job_id,
    start_video,
)

VIDEO_CONTENT_TYPE = "video/mp4"


@dataclass(frozen=True)
class VideoFlowConfig:
    """Deployment settings (environment of the video function)."""

    output_bucket: str
    work_bucket: str
    defaults: Options = field(default_factory=Options)
    settings: VideoSettings = field(default_factory=VideoSettings)
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS  # parts this long run in parallel
    single_seconds: float = 120.0  # videos up to this long run as one segment (one invocation)
    max_object_bytes: int = DEFAULT_VIDEO_MAX_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> VideoFlowConfig:
        env = os.environ if env is None else env
        settings = VideoSettings(
            audio=env.get("VIDEO_AUDIO", "keep"), detect_every=int(env.get("VIDEO_DETECT_EVERY", DETECT_EVERY))
        )
        settings.validate()
        return cls(
            output_bucket=env["OUTPUT_BUCKET"],
            work_bucket=env["WORK_BUCKET"],
            defaults=options_from_env(env),
            settings=settings,
            segment_seconds=float(env.get("VIDEO_SEGMENT_SECONDS", DEFAULT_SEGMENT_SECONDS)),
            single_seconds=float(env.get("VIDEO_SINGLE_SECONDS", "120")),
            max_object_bytes=int(env.get("VIDEO_MAX_OBJECT_BYTES", DEFAULT_VIDEO_MAX_BYTES)),
        )


def _download(s3: Any, source: Mapping[str, Any], path: Path, max_bytes: int) -> dict[str, Any]:
    """The source to a local file (Lambda: /tmp, up to 10 GB); its head (metadata) is returned."""
    kwargs: dict[str, Any] = {"Bucket": source["bucket"], "Key": source["key"]}
    if source.get("version_id"):
        kwargs["VersionId"] = source["version_id"]
    head = s3.head_object(**kwargs)
    if head["ContentLength"] > max_bytes:
        from ..errors import ImageTooLargeError

        raise ImageTooLargeError(f"video is {head['ContentLength']} bytes; the limit is {max_bytes}")
    extra = {"VersionId": source["version_id"]} if source.get("version_id") else None
    s3.download_file(source["bucket"], source["key"], str(path), ExtraArgs=extra)
    return head


def _options(s3: Any, source: Mapping[str, Any], head: Mapping[str, Any], config: VideoFlowConfig):
    """Image options and video settings from the object's ``anonymize-*`` metadata and tags."""
    from ..aws import request_option_values
    from ..aws.storage import object_option_values

    kwargs = {"Bucket": source["bucket"], "Key": source["key"]}
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(**kwargs).get("TagSet", [])}
    values = dict(object_option_values(head.get("Metadata", {}), tags))
    video = {k: values.pop(k) for k in VIDEO_OPTION_KEYS if k in values}
    options = parse_options(request_option_values(values, "object metadata/tags"), defaults=config.defaults)
    return values, video, options, config.settings.with_values(video)


def _work_key(job: str, name: str) -> str:
    return f"jobs/{job}/{name}"


def plan(event: Mapping[str, Any], s3: Any, config: VideoFlowConfig) -> dict[str, Any]:
    """Probe the video, read its options, cut it at keyframes. Returns the job and its segments."""
    source, job = event["source"], event["job_id"]
    _note(progress.planning, s3, config.work_bucket, job)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source"
        head = _download(s3, source, path, config.max_object_bytes)
        _, video_values, options, settings = _options(s3, source, head, config)
        info = io.probe_video(path)
        io.check_supported(info, options.max_pixels)
        whole = info.duration is not None and info.duration <= config.single_seconds
        seconds = 1e9 if whole else config.segment_seconds
        overlap = settings.tracks.max_gap + settings.tracks.pad
        cut: Plan = plan_segments(path, fps=info.fps, seconds=seconds, overlap=overlap)
    sizes = [s.stop - s.start for s in cut.segments]
    _note(progress.planned, s3, config.work_bucket, job, cut.frames, sizes)
    return {
        "job": {
            "job_id": job,
            "source": {**source, "etag": head["ETag"].strip('"'), "size": head["ContentLength"]},
            "frames": cut.frames,
            "overlap": cut.overlap,
            "parts": len(cut.segments),
            "video": video_values,
        },
        "segments": [s.to_dict() for s in cut.segments],
    }


def segment(event: Mapping[str, Any], s3: Any, config: VideoFlowConfig, anonymizer: Any) -> dict[str, Any]:
    """Anonymize one segment into a part in the work bucket (with its report beside it)."""
    job, seg = event["job"], Segment.from_dict(event["segment"])
    _note(progress.segment_started, s3, config.work_bucket, job["job_id"], seg.index)
    with tempfile.TemporaryDirectory() as tmp:
        path, part = Path(tmp) / "source", Path(tmp) / "part.mp4"
        head = _download(s3, job["source"], path, config.max_object_bytes)
        _, _, options, settings = _options(s3, job["source"], head, config)
        report = anonymize_segment(anonymizer, path, part, options, seg, settings, overlap=int(job["overlap"]))
        key = _work_key(job["job_id"], f"part-{seg.index:05d}.mp4")
        s3.upload_file(str(part), config.work_bucket, key, ExtraArgs={"ContentType": VIDEO_CONTENT_TYPE})
        s3.put_object(Bucket=config.work_bucket, Key=key + ".json", Body=json.dumps(report).encode())
    _note(progress.segment_done, s3, config.work_bucket, job["job_id"], seg.index, int(report["frames"]))
    return {"index": seg.index, "frames": report["frames"], "tracks": len(report["tracks"])}


def join(event: Mapping[str, Any], s3: Any, config: VideoFlowConfig, anonymizer: Any = None) -> dict[str, Any]:
    """Join every part (stream copy) with the source's audio; publish report then video."""
    job = event["job"]
    source = job["source"]
    keys = [_work_key(job["job_id"], f"part-{i:05d}.mp4") for i in range(int(job["parts"]))]
    _note(progress.joining, s3, config.work_bucket, job["job_id"])
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "source", Path(tmp) / "out.mp4"
        head = _download(s3, source, path, config.max_object_bytes)
        _, _, options, settings = _options(s3, source, head, config)
        parts, reports = [], []
        for i, key in enumerate(keys):
            part = Path(tmp) / f"part-{i:05d}.mp4"
            try:
                s3.download_file(config.work_bucket, key, str(part))
                body = s3.get_object(Bucket=config.work_bucket, Key=key + ".json")["Body"].read()
            except Exception as exc:  # a missing part: nothing is published
                raise JoinError(f"part {i} is missing") from exc
            parts.append(part)
            reports.append(json.loads(body))
        frames = join_parts(path, parts, out, audio=settings.audio)
        if frames != int(job["frames"]):
            raise JoinError(f"joined {frames} frames, the source has {job['frames']}: not published")
        info = io.probe_video(path)
        report = {
            "status": "ok",
            "anonymizer": __version__,
            "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source,
            "owner": head.get("Metadata", {}).get(OWNER_METADATA, ""),  # GET /results/{id} answers only them
            "video": {"width": info.width, "height": info.height, "frames": frames, "fps": info.fps},
            "audio": settings.audio if info.has_audio else "none",
            "parts": len(parts),
            "counts": _counts(reports, options),
            "frames_covered": sum(r["frames_covered"] for r in reports),
            "segments": reports,
            "options": options.to_dict(),
        }
        key = source["key"]
        s3.put_object(
            Bucket=config.output_bucket,
            Key=key + ".report.json",
            Body=json.dumps(report, default=str).encode(),
            ContentType="application/json",
        )
        s3.upload_file(  # the video last: whoever sees it can also find its report
            str(out),
            config.output_bucket,
            key,
            ExtraArgs={
                "ContentType": VIDEO_CONTENT_TYPE,
                "Metadata": {"anonymizer-version": __version__},  # no source ETag: it is the original's MD5
                "Tagging": urlencode({"anonymizer-status": "ok"}),
            },
        )
    cleanup(job["job_id"], s3, config)
    return {"status": "ok", "key": key, "frames": frames, "parts": len(parts), "counts": report["counts"]}


def _note(record: Callable[..., None], *args: Any) -> None:
    """Write a progress record, best effort: progress is for people watching, and a failed
    write of it must not fail (or retry) the video."""
    with contextlib.suppress(Exception):
        record(*args)


def _counts(reports: list[dict], options: Options) -> dict[str, int]:
    """Tracks per label, each counted once: by the segment whose own frames hold its first frame
    (a neighbour sees it too, in its context frames, and does not count it)."""
    out = {}
    for target in options.targets:
        out[target] = sum(
            t["label"] == target and r["segment"]["start"] <= t["first_frame"] < r["segment"]["stop"]
            for r in reports
            for t in r["tracks"]
        )
    return out


def cleanup(job: str, s3: Any, config: VideoFlowConfig) -> None:
    """Delete the job's work objects (best effort: the work bucket also expires them)."""
    with contextlib.suppress(Exception):
        listed = s3.list_objects_v2(Bucket=config.work_bucket, Prefix=_work_key(job, ""))
        for obj in listed.get("Contents", []):
            s3.delete_object(Bucket=config.work_bucket, Key=obj["Key"])


def fail(event: Mapping[str, Any], s3: Any, config: VideoFlowConfig) -> dict[str, Any]:
    """A step failed: record it like the image flow (failure report, input tags), publish nothing."""
    from ..aws.s3_flow import FlowConfig, ObjectRef, record_failure
    from ..aws.storage import S3Storage

    source, error = event["source"], event.get("error") or {}
    cause = str(error.get("Cause", ""))[:2000]
    code, message = _error_from_cause(cause, str(error.get("Error", "States.TaskFailed")))
    exc = AnonymizerError(message)
    exc.code = code
    ref = ObjectRef(source["bucket"], source["key"], source.get("version_id"), source.get("etag"), source.get("size"))
    summary = record_failure(S3Storage(s3), ref, exc, FlowConfig(output_bucket=config.output_bucket))
    cleanup(event["job_id"], s3, config)
    return summary


def _error_from_cause(cause: str, error: str) -> tuple[str, str]:
    """Step Functions passes a Lambda error as JSON in ``Cause``: errorType, errorMessage."""
    with contextlib.suppress(ValueError, TypeError):
        data = json.loads(cause)
        return _CODES.get(data.get("errorType", ""), "video_failed"), str(data.get("errorMessage", ""))[:500]
    return "video_failed", f"{error}: {cause}"[:500]


_CODES = {
    "InvalidVideoError": "invalid_video",
    "JoinError": "video_join_failed",
    "InvalidOptionsError": "invalid_options",
    "ImageTooLargeError": "image_too_large",
    "UnsupportedImageError": "unsupported_image",
    "DetectionError": "detection_failed",
}


def run_step(event: Mapping[str, Any], s3: Any, config: VideoFlowConfig, anonymizer_factory: Any) -> dict[str, Any]:
    """Dispatch on ``event["step"]``: the one entry point of the video function."""
    step = event.get("step")
    if step == "plan":
        return plan(event, s3, config)
    if step == "segment":
        return segment(event, s3, config, anonymizer_factory())
    if step == "join":
        return join(event, s3, config)
    if step == "fail":
        return fail(event, s3, config)
    raise ValueError(f"unknown step {step!r}")
