"""The video resources of template.yaml and the state machine definition they deploy."""

from __future__ import annotations

import json

import pytest
from test_template import ROOT, as_list, function_env, inline_statements, props, tpl  # noqa: F401 - fixture

DEFINITION = ROOT / "functions" / "video_workflow" / "statemachine.asl.json"
VIDEO = ("VideoWorkBucket", "VideoWorkBucketPolicy", "VideoFunction", "VideoFunctionLogGroup", "VideoStateMachine")


def _definition() -> dict:
    return json.loads(DEFINITION.read_text())


def test_video_resources_exist_only_when_enabled(tpl) -> None:  # noqa: F811
    assert tpl["Parameters"]["EnableVideo"]["Default"] == "false"  # `sam build` stays Docker-free
    for name in VIDEO:
        assert tpl["Resources"][name]["Condition"] == "VideoEnabled", name


def test_video_function_is_an_image_with_room_and_time(tpl) -> None:  # noqa: F811
    fn = props(tpl, "VideoFunction")
    assert fn["PackageType"] == "Image" and fn["Timeout"] == 900
    assert fn["EphemeralStorage"]["Size"] == 10240
    dockerfile = ROOT / tpl["Resources"]["VideoFunction"]["Metadata"]["Dockerfile"]
    text = dockerfile.read_text()
    assert "av>=" in text and "app.lambda_handler" in text and "ffmpeg" not in text.split("#")[-1].lower()
    assert (ROOT / "functions" / "video_anonymize" / "app.py").exists()


def test_video_function_has_least_privilege(tpl) -> None:  # noqa: F811
    grants: dict[str, set[str]] = {}
    for st in inline_statements(tpl, "VideoFunction"):
        for action in as_list(st["Action"]):
            assert "*" not in action
            for r in as_list(st["Resource"]):
                text = json.dumps(r)
                assert text not in ('"*"',), f"{action} on *"
                grants.setdefault(action, set()).add(text)
    assert grants["s3:PutObject"] == {
        json.dumps({"Fn::Sub": "${OutputBucket.Arn}/*"}),
        json.dumps({"Fn::Sub": "${VideoWorkBucket.Arn}/jobs/*"}),
    }
    assert grants["s3:DeleteObject"] == {json.dumps({"Fn::Sub": "${VideoWorkBucket.Arn}/jobs/*"})}
    assert not any("InputBucket" in r for a in grants if a.startswith("s3:Delete") for r in grants[a])


def test_state_machine_invokes_only_the_video_function(tpl) -> None:  # noqa: F811
    sm = props(tpl, "VideoStateMachine")
    assert sm["DefinitionUri"] == "functions/video_workflow/statemachine.asl.json"
    assert sm["DefinitionSubstitutions"] == {"VideoFunctionArn": {"Fn::GetAtt": ["VideoFunction", "Arn"]}}
    policies = sm["Policies"]
    assert {"LambdaInvokePolicy": {"FunctionName": {"Ref": "VideoFunction"}}} in policies
    assert "${VideoFunctionArn}" in DEFINITION.read_text()


def test_s3_function_routes_videos_to_the_state_machine(tpl) -> None:  # noqa: F811
    env = function_env(tpl, "S3AnonymizeFunction")
    assert env["VIDEO_STATE_MACHINE_ARN"] == {"Fn::If": ["VideoEnabled", {"Ref": "VideoStateMachine"}, ""]}
    (start,) = [st for st in inline_statements(tpl, "S3AnonymizeFunction") if "states:" in str(st["Action"])]
    assert start["Action"] == "states:StartExecution" and "stateMachine:${AWS::StackName}-video" in str(start)


def test_definition_is_plan_distributed_map_join_and_every_task_fails_closed() -> None:
    d = _definition()
    states = d["States"]
    assert d["StartAt"] == "Plan" and states["Plan"]["Next"] == "Segments" and states["Segments"]["Next"] == "Join"
    seg = states["Segments"]
    assert seg["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert seg["ToleratedFailurePercentage"] == 0  # one failed segment fails the video
    for name in ("Plan", "Segments", "Join"):
        assert states[name]["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "RecordFailure"}
        ]
    assert states["RecordFailure"]["Next"] == "Failed" and states["Failed"]["Type"] == "Fail"
    payloads = [s["Parameters"].get("Payload", {}).get("step") for s in states.values() if s["Type"] == "Task"]
    assert payloads == ["plan", "join", "fail"]


@pytest.mark.parametrize("state", ["Plan", "Join"])
def test_tasks_retry_only_lambda_service_errors(state: str) -> None:
    (retry,) = _definition()["States"][state]["Retry"]
    assert all(e.startswith("Lambda.") for e in retry["ErrorEquals"])  # a bad video is not retried
