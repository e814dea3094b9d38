"""The video function's pure parts: configuration, track counts across segments, error codes."""

from __future__ import annotations

import json

import pytest

from anonymizer.errors import InvalidOptionsError
from anonymizer.options import Options
from anonymizer.video import steps


def _track(label: str, first: int, last: int) -> dict:
    return {"label": label, "first_frame": first, "last_frame": last}


def test_a_track_seen_by_two_segments_is_counted_once() -> None:
    reports = [
        {"segment": {"start": 0, "stop": 100}, "tracks": [_track("face", 10, 20), _track("face", 90, 130)]},
        # the second segment sees the crossing face from its context (82..) and a plate of its own
        {"segment": {"start": 100, "stop": 200}, "tracks": [_track("face", 82, 130), _track("plate", 150, 160)]},
    ]
    assert steps._counts(reports, Options()) == {"face": 2, "plate": 1}


def test_lambda_errors_become_failure_codes() -> None:
    cause = json.dumps({"errorType": "InvalidVideoError", "errorMessage": "not a video file we can read"})
    assert steps._error_from_cause(cause, "InvalidVideoError") == ("invalid_video", "not a video file we can read")
    assert steps._error_from_cause("Task timed out after 900.00 seconds", "States.Timeout")[0] == "video_failed"


def test_config_from_env() -> None:
    env = {"OUTPUT_BUCKET": "o", "WORK_BUCKET": "w", "VIDEO_SEGMENT_SECONDS": "30", "VIDEO_AUDIO": "drop"}
    config = steps.VideoFlowConfig.from_env(env)
    assert (config.output_bucket, config.work_bucket, config.segment_seconds) == ("o", "w", 30.0)
    assert config.settings.audio == "drop" and config.single_seconds == 120.0
    with pytest.raises(InvalidOptionsError):
        steps.VideoFlowConfig.from_env({**env, "VIDEO_DETECT_EVERY": "50"})


def test_unknown_step_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown step"):
        steps.run_step({"step": "dance"}, None, None, None)


def test_the_handler_dispatches_steps_and_a_failure_raises() -> None:
    """functions/video_anonymize/app.py loaded as Lambda would: a plan for a missing object fails the step."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    import boto3
    from lambda_env import mock_lambda_env

    app_py = Path(__file__).resolve().parents[2] / "functions" / "video_anonymize" / "app.py"
    with mock_lambda_env(OUTPUT_BUCKET="video-out", WORK_BUCKET="video-work"):
        boto3.client("s3").create_bucket(Bucket="video-in")
        spec = importlib.util.spec_from_file_location("video_app", app_py)
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
        context = SimpleNamespace(
            function_name="video", memory_limit_in_mb=4096, aws_request_id="r1",
            invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:video",
        )  # fmt: skip
        event = steps.execution_input("video-in", "missing.mp4", None, "e", 1) | {"step": "plan"}
        with pytest.raises(Exception, match="404|Not Found"):
            app.lambda_handler(event, context)
        with pytest.raises(ValueError, match="unknown step"):
            app.lambda_handler({"step": "dance"}, context)
