"""Request options, parsed from flat string maps and validated in one place.

The API's query string, an S3 object's metadata/tags, environment defaults and the CLI all
speak the same flat ``key=value`` language, so one parser serves them all:

``targets=face,plate``  ``effect=blur``  ``face.effect=pixelate``  ``plate.effect=fill``
``threshold=0.4``  ``face.threshold=0.3``  ``face.min_size=24``  ``margin=0.2``  ``shape=ellipse|box``
``strength=1.5``  ``blocks=10``  ``color=#000000``  ``format=jpeg``  ``quality=85``

A key without a target prefix applies to every target; a prefixed key overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .effects import BLOCKS_MAX, BLOCKS_MIN, EFFECT_NAMES, SHAPES, STRENGTH_MAX, STRENGTH_MIN
from .errors import InvalidOptionsError
from .imageio import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS

TARGETS = ("face", "plate")
EFFECTS = EFFECT_NAMES
MARGIN_MIN = 0.1  # tighter regions leave enough of a face to recognise (tests/unit/test_privacy.py)

_PER_TARGET_KEYS = ("effect", "threshold", "min_size", "margin", "shape", "strength", "blocks", "color")
_GLOBAL_KEYS = ("targets", "format", "quality", "max_pixels")
_FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}


@dataclass(frozen=True)
class TargetOptions:
    """How one kind of target (faces or plates) is found and hidden."""

    effect: str = "blur"
    threshold: float | None = None  # None: the model's calibrated operating threshold
    min_size: float | None = None  # smallest object (px) to find; None: the model's (faces 15 px)
    margin: float = 0.15  # box enlarged by this fraction of its size on every side
    shape: str = "ellipse"
    strength: float = 1.0
    blocks: int = 8
    color: tuple[int, int, int] = (0, 0, 0)  # RGB


@dataclass(frozen=True)
class Options:
    """Everything one anonymization request can choose."""

    targets: tuple[str, ...] = TARGETS
    face: TargetOptions = field(default_factory=TargetOptions)
    plate: TargetOptions = field(default_factory=lambda: TargetOptions(shape="box", margin=0.1))
    output_format: str | None = None  # None: same as the input
    quality: int | None = None  # None: match the input's JPEG quality
    max_pixels: int = DEFAULT_MAX_PIXELS
    logo: bytes | None = field(default=None, repr=False)  # PNG bytes for effect=logo

    def for_target(self, target: str) -> TargetOptions:
        return self.face if target == "face" else self.plate

    def to_dict(self) -> dict:
        """A JSON-friendly summary for reports (never includes the logo bytes)."""
        return {
            "targets": list(self.targets),
            "face": _target_dict(self.face),
            "plate": _target_dict(self.plate),
            "format": self.output_format,
            "quality": self.quality,
        }


def _target_dict(t: TargetOptions) -> dict:
    return {
        "effect": t.effect,
        "threshold": t.threshold,
        "min_size": t.min_size,
        "margin": t.margin,
        "shape": t.shape,
        "strength": t.strength,
        "blocks": t.blocks,
        "color": "#{:02x}{:02x}{:02x}".format(*t.color),
    }


def parse_settings(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (the ``--set`` flags of the CLI and the tools) -> a flat option map."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidOptionsError(f"--set expects KEY=VALUE; got {item!r}")
        values[key] = value
    return values


def parse_options(
    values: Mapping[str, str] | None = None,
    *,
    logo: bytes | None = None,
    defaults: Options | None = None,
) -> Options:
    """Build validated Options from a flat string map; unknown keys are errors, not silence."""
    base = defaults or Options()
    values = {str(k).strip().lower().replace("-", "_"): str(v).strip() for k, v in (values or {}).items()}
    unknown = [k for k in values if not _known_key(k)]
    if unknown:
        raise InvalidOptionsError(
            f"unknown option(s): {', '.join(sorted(unknown))}; known: "
            f"{', '.join(_GLOBAL_KEYS + _PER_TARGET_KEYS)} (per target: face.KEY, plate.KEY)"
        )

    targets = base.targets
    if "targets" in values:
        targets = _parse_targets(values["targets"])
    per_target = {}
    for target in TARGETS:
        current = base.for_target(target)
        changes = {}
        for key in _PER_TARGET_KEYS:
            raw = values.get(f"{target}.{key}", values.get(key))
            if raw is not None and raw != "":
                changes[key] = _PARSERS[key](raw, f"{target}.{key}")
        per_target[target] = replace(current, **changes)

    output_format = base.output_format
    if values.get("format"):
        output_format = _parse_format(values["format"])
    quality = base.quality
    if values.get("quality"):
        quality = _parse_int(values["quality"], "quality", 1, 100)
    max_pixels = base.max_pixels
    if values.get("max_pixels"):
        max_pixels = _parse_int(values["max_pixels"], "max_pixels", 1, 1_000_000_000)

    options = Options(
        targets=targets,
        face=per_target["face"],
        plate=per_target["plate"],
        output_format=output_format,
        quality=quality,
        max_pixels=max_pixels,
        logo=logo if logo is not None else base.logo,
    )
    for target in options.targets:
        if options.for_target(target).effect == "logo" and not options.logo:
            raise InvalidOptionsError(f"{target}.effect=logo needs a logo image (PNG)")
    return options


def options_from_env(env: Mapping[str, str], prefix: str = "ANONYMIZER_") -> Options:
    """Defaults for a deployment: ANONYMIZER_TARGETS=face, ANONYMIZER_FACE_EFFECT=pixelate, ..."""
    values = {}
    for name, value in env.items():
        if name.startswith(prefix) and value != "":
            key = name[len(prefix) :].lower()
            for target in TARGETS:
                if key.startswith(target + "_") and key[len(target) + 1 :] in _PER_TARGET_KEYS:
                    key = f"{target}.{key[len(target) + 1 :]}"
            values[key] = value
    return parse_options(values)


def _known_key(key: str) -> bool:
    if key in _GLOBAL_KEYS or key in _PER_TARGET_KEYS:
        return True
    target, _, rest = key.partition(".")
    return target in TARGETS and rest in _PER_TARGET_KEYS


def _parse_targets(raw: str) -> tuple[str, ...]:
    names = [t.strip().lower() for t in raw.split(",") if t.strip()]
    names = [{"faces": "face", "plates": "plate"}.get(n, n) for n in names]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise InvalidOptionsError(f"targets must be a comma-separated subset of {', '.join(TARGETS)}; got {raw!r}")
    return tuple(t for t in TARGETS if t in names)


def _parse_choice(choices: tuple[str, ...]):
    def parse(raw: str, name: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise InvalidOptionsError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
        return value

    return parse


def _parse_float(raw: str, name: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidOptionsError(f"{name} must be a number; got {raw!r}") from None
    if not (low <= value <= high):  # also rejects NaN
        raise InvalidOptionsError(f"{name} must be between {low} and {high}; got {raw!r}")
    return value


def _parse_int(raw: str, name: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidOptionsError(f"{name} must be a whole number; got {raw!r}") from None
    if not (low <= value <= high):
        raise InvalidOptionsError(f"{name} must be between {low} and {high}; got {raw!r}")
    return value


_COLOR_NAMES = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
}


def _parse_color(raw: str, name: str) -> tuple[int, int, int]:
    value = raw.lower()
    if value in _COLOR_NAMES:
        return _COLOR_NAMES[value]
    match = re.fullmatch(r"#?([0-9a-f]{6})", value)
    if not match:
        raise InvalidOptionsError(f"{name} must be #RRGGBB or one of {', '.join(_COLOR_NAMES)}; got {raw!r}")
    h = match.group(1)
    return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


def _parse_format(raw: str) -> str:
    value = _FORMAT_ALIASES.get(raw.lower(), raw.lower())
    if value not in OUTPUT_FORMATS:
        raise InvalidOptionsError(f"format must be one of {', '.join(OUTPUT_FORMATS)}; got {raw!r}")
    return value


_PARSERS = {
    "effect": _parse_choice(EFFECT_NAMES),
    "shape": _parse_choice(SHAPES),
    "threshold": lambda raw, name: _parse_float(raw, name, 0.01, 0.99),
    "min_size": lambda raw, name: _parse_float(raw, name, 6.0, 400.0),
    "margin": lambda raw, name: _parse_float(raw, name, MARGIN_MIN, 1.0),
    "strength": lambda raw, name: _parse_float(raw, name, STRENGTH_MIN, STRENGTH_MAX),
    "blocks": lambda raw, name: _parse_int(raw, name, BLOCKS_MIN, BLOCKS_MAX),
    "color": _parse_color,
}
