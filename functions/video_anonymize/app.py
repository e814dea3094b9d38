"""The video function: one step of the video state machine per invocation.

Thin handler: Step Functions sends ``{"step": "plan" | "segment" | "join" | "fail", ...}``
(functions/video_workflow/statemachine.asl.json); :mod:`anonymizer.video.steps` does the work.
An exception fails the step, the state machine's Catch records the failure and nothing is
published. Image content is never logged: only keys, counts and timings.

Environment: OUTPUT_BUCKET, WORK_BUCKET, VIDEO_SEGMENT_SECONDS, VIDEO_SINGLE_SECONDS, VIDEO_AUDIO,
VIDEO_DETECT_EVERY, VIDEO_MAX_OBJECT_BYTES, ANONYMIZER_* (option defaults), POWERTOOLS_*.
"""

from __future__ import annotations

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from anonymizer.aws import get_anonymizer
from anonymizer.video import steps

logger = Logger()
config = steps.VideoFlowConfig.from_env()
s3 = boto3.client("s3")


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    logger.append_keys(
        step=event.get("step"), key=(event.get("source") or event.get("job", {}).get("source", {})).get("key")
    )
    result = steps.run_step(event, s3, config, get_anonymizer)
    logger.info(
        "step done", extra={k: v for k, v in result.items() if k in ("index", "frames", "parts", "counts", "status")}
    )
    return result
