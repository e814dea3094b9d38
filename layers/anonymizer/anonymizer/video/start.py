"""Starting a video job: what the S3 flow needs to route a video key to the state machine.

Kept apart from ``steps`` (which records failures through ``aws.s3_flow``) so that the S3 flow can
import it without a circle: ``aws.s3_flow`` -> ``video.start``, ``video.steps`` -> ``aws.s3_flow``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from . import io

VIDEO_OPTION_KEYS = ("audio", "detect_every")  # video-only options, beside the image ones
VIDEO_UPLOAD_SUFFIX = ".mp4"  # POST /uploads?kind=video: the key the S3 flow routes here
DEFAULT_VIDEO_MAX_BYTES = 4 * 1024**3  # one video object (the video function has 10 GB of /tmp)


def job_id(source: Mapping[str, Any]) -> str:
    """Idempotent id of one object version: the same upload always maps to the same job."""
    ident = json.dumps([source["bucket"], source["key"], source.get("version_id") or source.get("etag")])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def execution_input(bucket: str, key: str, version_id: str | None, etag: str | None, size: int | None) -> dict:
    """What the S3 flow hands the state machine for one video object."""
    source = {"bucket": bucket, "key": key, "version_id": version_id, "etag": etag, "size": size}
    return {"source": source, "job_id": job_id(source)}


def is_video_key(key: str) -> bool:
    """The S3 flow's router: video keys by extension, any case (the bytes are checked at plan)."""
    return key.lower().endswith(io.VIDEO_EXTENSIONS)


def start_video(
    state_machine_arn: str, bucket: str, key: str, version_id: str | None, etag: str | None, size: int | None, sfn=None
) -> dict[str, Any]:
    """Start the video state machine for one object; the execution name is the job id, so a
    repeated event for the same object version starts nothing (idempotent like the image flow)."""
    if sfn is None:
        import boto3

        sfn = boto3.client("stepfunctions")
    data = execution_input(bucket, key, version_id, etag, size)
    base = {"bucket": bucket, "key": key, "version_id": version_id, "etag": etag}
    try:
        started = sfn.start_execution(stateMachineArn=state_machine_arn, name=data["job_id"], input=json.dumps(data))
    except sfn.exceptions.ExecutionAlreadyExists:
        return {**base, "status": "skipped", "reason": "video job already started", "job_id": data["job_id"]}
    return {**base, "status": "video_started", "job_id": data["job_id"], "execution": started["executionArn"]}
