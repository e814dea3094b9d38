"""Options: parsing, environment defaults, and the one table walked through every door."""

import json
import os
from urllib.parse import urlencode

import boto3
import pytest
from aws_fakes import FakeAnonymizer, make_jpeg
from lambda_env import mock_lambda_env

from anonymizer.errors import InvalidOptionsError
from anonymizer.options import (
    OPTIONS,
    Options,
    OptionSpec,
    cli_flag,
    describe,
    env_name,
    metadata_key,
    options_from_env,
    parse_options,
)
from anonymizer_local import cli
from anonymizer_local.emulator import FakeLambdaContext, api_event, load_function


def test_defaults_cover_both_targets_with_blur():
    options = parse_options({})
    assert options.targets == ("face", "plate")
    assert options.face.effect == "blur" and options.plate.effect == "blur"
    assert options.face.shape == "ellipse" and options.plate.shape == "box"


def test_per_target_keys_override_shared_ones():
    options = parse_options({"effect": "pixelate", "plate.effect": "fill", "color": "#ff0000", "blocks": "6"})
    assert options.face.effect == "pixelate"
    assert options.plate.effect == "fill"
    assert options.plate.color == (255, 0, 0)
    assert options.face.blocks == 6


def test_targets_are_normalised_and_ordered():
    assert parse_options({"targets": "plates, face"}).targets == ("face", "plate")


@pytest.mark.parametrize(
    "values",
    [
        {"targets": "cars"},
        {"targets": ""},
        {"effect": "swirl"},
        {"threshold": "1.5"},
        {"threshold": "nan"},
        {"margin": "-0.1"},
        {"strength": "0.1"},
        {"blocks": "100"},
        {"blocks": "4.5"},
        {"color": "red-ish"},
        {"format": "gif"},
        {"quality": "0"},
        {"bogus": "1"},
        {"face.nope": "1"},
        {"effect": "logo"},  # a logo effect needs a logo
    ],
)
def test_bad_options_are_clear_errors(values):
    with pytest.raises(InvalidOptionsError) as info:
        parse_options(values)
    assert str(info.value)


def test_logo_effect_accepts_a_logo():
    assert parse_options({"effect": "logo"}, logo=b"png").logo == b"png"


def test_environment_defaults_then_request_overrides():
    env = {"ANONYMIZER_TARGETS": "face", "ANONYMIZER_FACE_EFFECT": "pixelate", "OTHER": "x"}
    defaults = options_from_env(env)
    assert defaults.targets == ("face",) and defaults.face.effect == "pixelate"
    options = parse_options({"face.effect": "fill"}, defaults=defaults)
    assert options.targets == ("face",) and options.face.effect == "fill"


def test_report_summary_never_contains_logo_bytes():
    summary = Options(logo=b"secret").to_dict()
    assert "secret" not in str(summary)


# --- the option table reaches every door ---------------------------------------------------------


def _sample(spec: OptionSpec, key: str) -> str:
    """A valid value that changes the defaults, picked from the table's own range."""
    if spec.type in ("list", "string"):
        return next(c for c in spec.choices if c != "logo" and parse_options({key: c}) != Options())
    if spec.type == "color":
        return "123456"
    if spec.type == "integer":
        return str(int(spec.minimum) + 1)
    return f"{spec.minimum + (spec.maximum - spec.minimum) / 4:.2f}"


WALK = [(key, _sample(spec, key), spec) for spec in OPTIONS for key in spec.flat_keys()]
WALK_IDS = [key for key, _, _ in WALK]


def test_describe_lists_every_key_once_as_json():
    described = describe()
    assert [d["key"] for d in described] == [spec.key for spec in OPTIONS]
    assert json.loads(json.dumps(described)) == described
    for item, spec in zip(described, OPTIONS, strict=True):
        assert item["help"] and item["type"] == spec.type and item["per_target"] == spec.per_target
        assert ("choices" in item) or ("min" in item and item["min"] < item["max"]) or spec.type == "color"
        if spec.per_target:
            assert set(item["default"]) == {"face", "plate"}
    margin = next(d for d in described if d["key"] == "margin")
    assert margin["default"] == {"face": Options().face.margin, "plate": Options().plate.margin}
    assert "min_size" in [d["key"] for d in described]


def test_describe_shows_the_deployment_defaults():
    described = {d["key"]: d for d in describe(options_from_env({"ANONYMIZER_FACE_EFFECT": "fill"}))}
    assert described["effect"]["default"] == {"face": "fill", "plate": "blur"}


@pytest.mark.parametrize(("key", "value", "spec"), WALK, ids=WALK_IDS)
def test_every_key_through_the_cli(key, value, spec, monkeypatch):
    expected = parse_options({key: value})
    assert expected != Options()  # the sample really changes something
    for name in [n for n in os.environ if n.startswith("ANONYMIZER_")]:
        monkeypatch.delenv(name)
    parser = cli.build_parser("run")
    by_flag = cli._options_from_args(parser.parse_args(["in.jpg", "-o", "out", cli_flag(key), value]))
    by_set = cli._options_from_args(parser.parse_args(["in.jpg", "-o", "out", "--set", f"{key}={value}"]))
    monkeypatch.setenv(env_name(key), value)
    by_env = cli._options_from_args(parser.parse_args(["in.jpg", "-o", "out"]))
    assert by_flag == by_set == by_env == expected
    if spec.detection:  # detect and eval take the options that change what is found
        detect = cli.build_parser("detect").parse_args(["in.jpg", cli_flag(key), value])
        assert cli._options_from_args(detect) == expected


@pytest.mark.parametrize(("key", "value", "spec"), WALK, ids=WALK_IDS)
def test_every_key_through_the_environment(key, value, spec):
    assert options_from_env({env_name(key): value, "ANONYMIZER_DATA": "/elsewhere"}) == parse_options({key: value})


@pytest.mark.parametrize(("key", "value", "spec"), WALK, ids=WALK_IDS)
def test_every_key_through_s3_metadata_and_tags(key, value, spec):
    from anonymizer.aws.s3_flow import FlowConfig, ObjectRef, process_object
    from anonymizer.aws.storage import S3Storage

    expected = parse_options({key: value})
    config = FlowConfig(output_bucket="walk-out", defaults=Options(), max_object_bytes=100_000)
    with mock_lambda_env():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="walk-in")
        s3.create_bucket(Bucket="walk-out")
        for name, extra in (
            ("meta.jpg", {"Metadata": {metadata_key(key): value}}),
            ("tag.jpg", {"Tagging": urlencode({metadata_key(key): value})}),
        ):
            body = make_jpeg()
            etag = s3.put_object(Bucket="walk-in", Key=name, Body=body, **extra)["ETag"].strip('"')
            ref = ObjectRef(bucket="walk-in", key=name, etag=etag, size=len(body))
            fake = FakeAnonymizer()
            if spec.deployment_only:  # refused: a permanent failure, recorded or raised, never run
                try:
                    outcome = process_object(ref, storage=S3Storage(s3), anonymizer=fake, config=config)
                except InvalidOptionsError as exc:
                    outcome = {"status": "failed", "message": str(exc)}
                assert outcome["status"] == "failed" and env_name(key) in outcome["message"]
                assert fake.calls == []
            else:
                process_object(ref, storage=S3Storage(s3), anonymizer=fake, config=config)
                assert fake.calls == [("anonymize", expected)]


@pytest.fixture(scope="module")
def api_fn():
    with mock_lambda_env(OUTPUT_BUCKET="walk-out", UPLOAD_BUCKET="walk-in"):
        yield load_function("api_anonymize")


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # a refused request adds none
@pytest.mark.parametrize(("key", "value", "spec"), WALK, ids=WALK_IDS)
def test_every_key_through_the_api_query_and_openapi(key, value, spec, api_fn):
    import anonymizer.aws as aws
    from anonymizer.aws.api_flow import openapi_document

    fake = FakeAnonymizer()
    previous = aws.set_anonymizer(fake)
    try:
        event = api_event(
            "POST", "/anonymize", query={key: [value]}, headers={"Content-Type": "image/jpeg"}, body=make_jpeg()
        )
        response = api_fn.lambda_handler(event, FakeLambdaContext())
    finally:
        aws.set_anonymizer(previous)
    params = {p["name"]: p for p in openapi_document()["paths"]["/anonymize"]["post"]["parameters"]}
    if spec.deployment_only:
        assert response["statusCode"] == 400 and env_name(key) in response["body"]
        assert fake.calls == [] and key not in params
    else:
        assert fake.calls == [("anonymize", parse_options({key: value}))]
        assert params[key]["in"] == "query" and params[key]["description"]
