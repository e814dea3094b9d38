"""Request options: one table (:data:`OPTIONS`) that every door is derived from.

The API's query string, an S3 object's metadata/tags, ``ANONYMIZER_*`` environment defaults, the
CLI's flags and the web page's form all speak the same flat ``key=value`` language, so one table
names each key once, with its type, range, default and help, and one parser reads them all:

``targets=face,plate``  ``effect=blur``  ``face.effect=pixelate``  ``plate.effect=fill``
``threshold=0.4``  ``face.threshold=0.3``  ``face.min_size=24``  ``margin=0.2``  ``shape=ellipse|box``
``strength=1.5``  ``blocks=8``  ``color=#000000``  ``format=jpeg``  ``quality=85``

A per-target key without a prefix applies to every target; a prefixed key overrides it.
How a key is spelled at each door (all derived here, nowhere else):

* flat key / API query parameter / ``--set``: ``face.min_size``
* CLI flag: ``--face-min-size``
* S3 metadata or tag: ``anonymize-face-min-size`` (``x-amz-meta-anonymize-face-min-size``)
* environment default: ``ANONYMIZER_FACE_MIN_SIZE``
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .effects import BLOCKS_MAX, BLOCKS_MIN, EFFECT_NAMES, SHAPES, STRENGTH_MAX, STRENGTH_MIN
from .errors import InvalidOptionsError
from .imageio import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS

TARGETS = ("face", "plate")
EFFECTS = EFFECT_NAMES
MARGIN_MIN = 0.1  # tighter regions leave enough of a face to recognise (tests/unit/test_privacy.py)
ENV_PREFIX = "ANONYMIZER_"
METADATA_PREFIX = "anonymize-"  # S3 user metadata / tag keys
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
        "color": _color_text(t.color),
    }


def _color_text(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


# --- value parsers (raw string, the key's name for messages) -> value ---------------------------


def _parse_targets(raw: str, name: str = "targets") -> tuple[str, ...]:
    names = [t.strip().lower() for t in raw.split(",") if t.strip()]
    names = [{"faces": "face", "plates": "plate"}.get(n, n) for n in names]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise InvalidOptionsError(f"{name} must be a comma-separated subset of {', '.join(TARGETS)}; got {raw!r}")
    return tuple(t for t in TARGETS if t in names)


def _parse_choice(choices: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> Callable[[str, str], str]:
    def parse(raw: str, name: str) -> str:
        value = raw.lower()
        value = (aliases or {}).get(value, value)
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
        raise InvalidOptionsError(f"{name} must be between {low:g} and {high:g}; got {raw!r}")
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


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionSpec:
    """One option: how it is spelled, parsed, bounded and explained, for every door at once."""

    key: str  # flat key without a target prefix: "min_size"
    type: str  # "list" (comma-separated subset of choices), "string" (one of choices), "number", "integer", "color"
    help: str
    parse: Callable[[str, str], Any] = field(repr=False, compare=False)
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    per_target: bool = False  # also spelled face.KEY / plate.KEY
    detection: bool = False  # changes what is found (detect/eval accept it), not only how it is hidden
    deployment_only: bool = False  # environment / CLI only: a request or an uploaded object may not set it

    def flat_keys(self) -> tuple[str, ...]:
        """Every spelling a flat map may use: ``min_size``, ``face.min_size``, ``plate.min_size``."""
        return (self.key, *(f"{t}.{self.key}" for t in TARGETS)) if self.per_target else (self.key,)


def _number(key: str, help: str, low: float, high: float, *, integer: bool = False, **flags: bool) -> OptionSpec:
    def parse(raw: str, name: str) -> float | int:
        return _parse_int(raw, name, int(low), int(high)) if integer else _parse_float(raw, name, low, high)

    return OptionSpec(key, "integer" if integer else "number", help, parse, minimum=low, maximum=high, **flags)


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "targets", "list", "What to find and hide: a comma-separated subset of face,plate.",
        _parse_targets, choices=TARGETS, detection=True,
    ),
    OptionSpec(
        "effect", "string", "How a found region is hidden (logo needs a logo image).",
        _parse_choice(EFFECT_NAMES), choices=EFFECT_NAMES, per_target=True,
    ),
    _number(
        "threshold", "Detection score threshold; lower finds more (default: the model card's).",
        0.01, 0.99, per_target=True, detection=True,
    ),
    _number(
        "min_size", "Smallest object to find, in pixels; larger is faster on big photos (default: the model's).",
        6.0, 400.0, per_target=True, detection=True,
    ),
    _number("margin", "Each box is enlarged by this fraction of its size on every side.", MARGIN_MIN, 1.0,
            per_target=True),  # fmt: skip
    OptionSpec(
        "shape", "string", "Region shape: ellipse (soft edge) or box.",
        _parse_choice(SHAPES), choices=SHAPES, per_target=True,
    ),
    _number("strength", "Effect strength (blur sigma, deform amount) multiplier.", STRENGTH_MIN, STRENGTH_MAX,
            per_target=True),  # fmt: skip
    _number(
        "blocks", "Pixelate: mosaic blocks across a region (more would let a face be recognised).",
        BLOCKS_MIN, BLOCKS_MAX, integer=True, per_target=True,
    ),
    OptionSpec("color", "color", "Fill colour and logo background, #RRGGBB.", _parse_color, per_target=True),
    OptionSpec(
        "format", "string", "Output image format (default: as the input).",
        _parse_choice(OUTPUT_FORMATS, _FORMAT_ALIASES), choices=OUTPUT_FORMATS,
    ),
    _number("quality", "JPEG/WebP output quality (default: as the input).", 1, 100, integer=True),
    _number(
        "max_pixels", "Largest image accepted, in pixels (decompression-bomb guard; set by the deployment).",
        1, 1_000_000_000, integer=True, detection=True, deployment_only=True,
    ),
)  # fmt: skip
SPECS: dict[str, OptionSpec] = {spec.key: spec for spec in OPTIONS}
_PER_TARGET_KEYS = tuple(s.key for s in OPTIONS if s.per_target)
_GLOBAL_KEYS = tuple(s.key for s in OPTIONS if not s.per_target)


def flat_keys(*, deployment_only: bool = True) -> Iterator[str]:
    """Every key a flat option map may hold, in table order (prefixed variants after their base)."""
    for spec in OPTIONS:
        if deployment_only or not spec.deployment_only:
            yield from spec.flat_keys()


def spec_for(key: str) -> OptionSpec:
    """The table row of a flat key (``face.min_size`` -> the ``min_size`` row); KeyError if unknown."""
    target, _, rest = key.rpartition(".")
    spec = SPECS[rest]
    if target and (target not in TARGETS or not spec.per_target):
        raise KeyError(key)
    return spec


def normalize_key(name: str) -> str:
    """Any door's spelling -> the flat key: ``face-min-size``, ``FACE_MIN_SIZE``, ``face.min_size``
    -> ``face.min_size``. Unknown names come back normalised so that the parser can name them."""
    name = str(name).strip().lower().replace("-", "_")
    for target in TARGETS:
        for sep in ("_", "."):
            if name.startswith(target + sep) and name[len(target) + 1 :] in _PER_TARGET_KEYS:
                return f"{target}.{name[len(target) + 1 :]}"
    return name


def cli_flag(key: str) -> str:
    """``face.min_size`` -> ``--face-min-size``."""
    return "--" + key.replace(".", "-").replace("_", "-")


def metadata_key(key: str) -> str:
    """``face.min_size`` -> ``anonymize-face-min-size`` (S3 user metadata without ``x-amz-meta-``, or a tag)."""
    return METADATA_PREFIX + key.replace(".", "-").replace("_", "-")


def env_name(key: str) -> str:
    """``face.min_size`` -> ``ANONYMIZER_FACE_MIN_SIZE``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def describe(defaults: Options | None = None) -> list[dict[str, Any]]:
    """The table as JSON for forms and docs (``GET /options``): one dict per option.

    Each has ``key``, ``type``, ``default``, ``help``, ``per_target``, ``deployment_only`` and
    either ``choices`` or ``min``/``max`` (``color`` has neither). A per-target option's
    ``default`` is ``{"face": ..., "plate": ...}``; ``null`` means "the model's own".
    """
    base = defaults or Options()
    out = []
    for spec in OPTIONS:
        item: dict[str, Any] = {
            "key": spec.key,
            "type": spec.type,
            "default": _default(base, spec.key),
            "help": spec.help,
            "per_target": spec.per_target,
            "deployment_only": spec.deployment_only,
        }
        if spec.choices is not None:
            item["choices"] = list(spec.choices)
        if spec.minimum is not None:
            item["min"], item["max"] = spec.minimum, spec.maximum
        out.append(item)
    return out


def _default(options: Options, key: str) -> Any:
    if key in _PER_TARGET_KEYS:
        return {t: _target_dict(options.for_target(t))[key] for t in TARGETS}
    return {
        "targets": ",".join(options.targets),
        "format": options.output_format,
        "quality": options.quality,
        "max_pixels": options.max_pixels,
    }[key]


def openapi_parameters(*, deployment_only: bool = False) -> list[dict[str, Any]]:
    """OpenAPI 3 query parameters for every flat key (prefixed variants included)."""
    params = []
    for spec in OPTIONS:
        if spec.deployment_only and not deployment_only:
            continue
        schema: dict[str, Any] = {"type": {"list": "string", "color": "string"}.get(spec.type, spec.type)}
        if spec.type == "string" and spec.choices:
            schema["enum"] = list(spec.choices)
        if spec.type == "list":
            schema["example"] = ",".join(spec.choices or ())
        if spec.type == "color":
            schema["pattern"] = "^#?[0-9a-fA-F]{6}$"
        if spec.minimum is not None:
            schema["minimum"], schema["maximum"] = spec.minimum, spec.maximum
        for key in spec.flat_keys():
            target = key.partition(".")[0] if "." in key else None
            description = spec.help + (f" For {target}s only (overrides {spec.key})." if target else "")
            params.append({"name": key, "in": "query", "required": False, "description": description, "schema": schema})
    return params


# --- parsing flat maps --------------------------------------------------------------------------


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
    values = {normalize_key(k): str(v).strip() for k, v in (values or {}).items()}
    unknown = [k for k in values if not _known_key(k)]
    if unknown:
        raise InvalidOptionsError(
            f"unknown option(s): {', '.join(sorted(unknown))}; known: "
            f"{', '.join(_GLOBAL_KEYS + _PER_TARGET_KEYS)} (per target: face.KEY, plate.KEY)"
        )

    def given(key: str) -> Any:
        raw = values.get(key)
        return None if raw is None or raw == "" else SPECS[key.rpartition(".")[2]].parse(raw, key)

    per_target = {}
    for target in TARGETS:
        changes = {}
        for key in _PER_TARGET_KEYS:
            value = given(f"{target}.{key}")
            value = given(key) if value is None else value
            if value is not None:
                changes[key] = value
        per_target[target] = replace(base.for_target(target), **changes)

    def global_value(key: str, current: Any) -> Any:
        value = given(key)
        return current if value is None else value

    if "targets" in values and values["targets"] == "":
        _parse_targets("")  # an explicitly empty target list is an error, not "the default"
    options = Options(
        targets=global_value("targets", base.targets),
        face=per_target["face"],
        plate=per_target["plate"],
        output_format=global_value("format", base.output_format),
        quality=global_value("quality", base.quality),
        max_pixels=global_value("max_pixels", base.max_pixels),
        logo=logo if logo is not None else base.logo,
    )
    for target in options.targets:
        if options.for_target(target).effect == "logo" and not options.logo:
            raise InvalidOptionsError(f"{target}.effect=logo needs a logo image (PNG)")
    return options


def env_option_values(env: Mapping[str, str], prefix: str = ENV_PREFIX) -> dict[str, str]:
    """The option values among environment variables (``ANONYMIZER_FACE_EFFECT`` -> ``face.effect``).

    Only names the table knows are read: other ``ANONYMIZER_*`` variables (paths for tools and
    tests) are not options.
    """
    names = {env_name(key).removeprefix(ENV_PREFIX): key for key in flat_keys()}
    out = {}
    for name, value in env.items():
        if name.startswith(prefix) and value != "" and name[len(prefix) :] in names:
            out[names[name[len(prefix) :]]] = value
    return out


def options_from_env(env: Mapping[str, str], prefix: str = ENV_PREFIX) -> Options:
    """Defaults for a deployment or a laptop: ANONYMIZER_TARGETS=face, ANONYMIZER_FACE_EFFECT=pixelate, ..."""
    values = env_option_values(env, prefix)
    for key, raw in values.items():  # a bad value is named by its variable, not by its flat key
        spec_for(key).parse(raw, prefix + env_name(key).removeprefix(ENV_PREFIX))
    return parse_options(values)


def _known_key(key: str) -> bool:
    try:
        spec_for(key)
    except KeyError:
        return False
    return True
