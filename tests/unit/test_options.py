import pytest

from anonymizer.errors import InvalidOptionsError
from anonymizer.options import Options, options_from_env, parse_options


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
