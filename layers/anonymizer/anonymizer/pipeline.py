"""Image bytes + options -> anonymized bytes + report. The one entry point every caller uses.

Fail closed: any exception here means the caller publishes nothing. Errors about the
request or the image are ``AnonymizerError``s (4xx / failed record); anything else, from a
detector or an encoder, propagates as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import __version__, imageio
from .detection import (
    CenterNetDetector,
    Detection,
    SharedTrunkDetector,
    elapsed_ms,
    get_detector,
    get_shared_detector,
)
from .effects import EffectSpec, apply_effect, load_logo
from .errors import DetectionError
from .options import Options

REPORT_SCHEMA_VERSION = 1
"""Version of the report's JSON form (docs/report.schema.json); bumped on incompatible changes only."""


@dataclass(frozen=True)
class ImageSummary:
    """The decoded input, as the detector saw it (upright)."""

    width: int
    height: int
    format: str
    grey: bool = False  # one colour channel in; the output is written grey too
    colour_profile: str | None = None  # the ICC profile converted to sRGB (None: none, or sRGB already)


@dataclass(frozen=True)
class DetectionRecord:
    """One face or plate: the detector's box, and on anonymize the region changed and its effect."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    region: tuple[int, int, int, int] | None = None
    effect: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
        }
        if self.region is not None:
            out["region"] = list(self.region)
        if self.effect is not None:
            out["effect"] = self.effect
        return out


@dataclass(frozen=True)
class OutputSummary:
    format: str
    bytes: int
    quality: int | None


@dataclass(frozen=True)
class Report:
    """What one run did: the one typed report behind every door (JSON form: ``to_dict``, whose schema
    is docs/report.schema.json). ``thresholds`` are the scores actually used per class: the request's,
    or the model card's operating threshold when the request left it open."""

    anonymizer: str
    image: ImageSummary
    detections: tuple[DetectionRecord, ...]
    targets: tuple[str, ...]
    thresholds: dict[str, float]
    models: dict[str, str]
    options: dict[str, Any]
    timings_ms: dict[str, float]
    output: OutputSummary | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {t: sum(d.label == t for d in self.detections) for t in self.targets}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (keys of the untyped report kept, so readers of the old dicts still work)."""
        out: dict[str, Any] = {
            "schema": REPORT_SCHEMA_VERSION,
            "anonymizer": self.anonymizer,
            "image": asdict(self.image),
            "counts": self.counts,
            "detections": [d.to_dict() for d in self.detections],
            "thresholds": dict(self.thresholds),
            "models": dict(self.models),
            "options": self.options,
            "timings_ms": dict(self.timings_ms),
        }
        if self.output is not None:
            out["output"] = asdict(self.output)
        return out


@dataclass
class Result:
    """The anonymized image and its typed report; ``report`` is the JSON form (a fresh dict each time)."""

    data: bytes
    content_type: str
    format: str
    details: Report

    @property
    def report(self) -> dict[str, Any]:
        return self.details.to_dict()


DetectorFactory = Callable[[str], CenterNetDetector]
SharedFactory = Callable[[frozenset[str]], SharedTrunkDetector | None]


class Anonymizer:
    """Create once per process (a Lambda container): detectors load on first use and stay."""

    def __init__(self, detector_factory: DetectorFactory = get_detector, shared_factory: SharedFactory | None = None):
        """A custom ``detector_factory`` (tests, fault drills) runs each model on its own unless
        a ``shared_factory`` is given too; by default face+plate share one trunk."""
        self._detector_factory = detector_factory
        if shared_factory is None and detector_factory is get_detector:
            shared_factory = get_shared_detector
        self._shared_factory = shared_factory

    def shared_detector(self, targets: tuple[str, ...]) -> SharedTrunkDetector | None:
        if self._shared_factory is None or len(targets) < 2:
            return None
        try:
            return self._shared_factory(frozenset(targets))
        except DetectionError:
            raise
        except Exception as exc:  # a broken joint model must stop publication like any other
            raise DetectionError("shared detector could not be loaded") from exc

    def detector(self, label: str) -> CenterNetDetector:
        try:
            return self._detector_factory(label)
        except DetectionError:
            raise
        except Exception as exc:  # a missing or broken model must stop publication
            raise DetectionError(f"{label} detector could not be loaded") from exc

    def preload(self, targets: tuple[str, ...]) -> None:
        """Load every network these targets use (e.g. in a Lambda's init phase)."""
        self.shared_detector(targets)  # first: it loads its members too, side by side
        for target in targets:
            self.detector(target)

    def anonymize(self, data: bytes, options: Options) -> Result:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        decoded = self._decode(data, options, timings)
        detections = self._detect(decoded.pixels, options, timings)

        t0 = time.perf_counter()
        pixels = decoded.pixels
        height, width = pixels.shape[:2]
        logo = _logo(options.logo) if options.logo else None
        specs = {target: _effect_spec(options, target, logo) for target in options.targets}
        records = []
        for det in detections:
            target = options.for_target(det.label)
            region = expand_box(det.box, target.margin, width, height)
            apply_effect(pixels, region, specs[det.label])
            records.append(DetectionRecord(det.label, det.score, det.box, region, specs[det.label].name))
        timings["effects"] = elapsed_ms(t0)

        t0 = time.perf_counter()
        out_format = options.output_format or imageio.output_format_for(decoded.format, alpha=decoded.alpha is not None)
        quality = options.quality or decoded.quality
        out = imageio.encode(  # refuses output with metadata
            pixels, decoded.alpha, out_format, quality=quality, grey=decoded.grey
        )
        timings["encode"] = elapsed_ms(t0)
        timings["total"] = elapsed_ms(started)

        report = self._report(
            decoded, records, options, self.thresholds(options), timings, OutputSummary(out_format, len(out), quality)
        )
        return Result(out, imageio.CONTENT_TYPES[out_format], out_format, report)

    def detect(self, data: bytes, options: Options, min_score: float | None = None) -> dict[str, Any]:
        """Detections only (no effect, no output image), as the report's JSON form."""
        return self.detect_report(data, options, min_score).to_dict()

    def detect_report(self, data: bytes, options: Options, min_score: float | None = None) -> Report:
        """Detections only, as the typed report; ``min_score`` replaces every class's threshold."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        decoded = self._decode(data, options, timings)
        detections = self._detect(decoded.pixels, options, timings, min_score)
        timings["total"] = elapsed_ms(started)
        records = [DetectionRecord(d.label, d.score, d.box) for d in detections]
        return self._report(decoded, records, options, self.thresholds(options, min_score), timings)

    def thresholds(self, options: Options, min_score: float | None = None) -> dict[str, float]:
        """The score each class is cut at: ``min_score``, else the request's, else the model card's."""
        out = {}
        for target in options.targets:
            chosen = min_score if min_score is not None else options.for_target(target).threshold
            out[target] = float(chosen if chosen is not None else self.detector(target).card.threshold)
        return out

    def detect_pixels(self, pixels: np.ndarray, options: Options, min_score: float | None = None) -> list[Detection]:
        return self._detect(pixels, options, {}, min_score)

    def _decode(self, data: bytes, options: Options, timings: dict) -> imageio.DecodedImage:
        t0 = time.perf_counter()
        decoded = imageio.decode(data, max_pixels=options.max_pixels)
        timings["decode"] = elapsed_ms(t0)
        return decoded

    def _detect(
        self, pixels: np.ndarray, options: Options, timings: dict, min_score: float | None = None
    ) -> list[Detection]:
        """Unset thresholds stay None here: each detector applies its own card's, the value that
        ``thresholds`` reports afterwards (looking it up first would load every model before the
        first one ran)."""
        wanted = {}
        for target in options.targets:
            target_options = options.for_target(target)
            threshold = min_score if min_score is not None else target_options.threshold
            wanted[target] = (threshold, target_options.min_size)
        shared = self.shared_detector(tuple(wanted))
        if shared is not None:  # one network run serves every target where their passes coincide
            by_label = shared.detect(pixels, wanted, timings)
        else:
            by_label = {}
            for target, (threshold, min_size) in wanted.items():
                t0 = time.perf_counter()
                by_label[target] = self.detector(target).detect(pixels, threshold, min_size)
                timings[f"detect_{target}"] = elapsed_ms(t0)
        return [det for target in wanted for det in by_label[target]]

    def _report(
        self,
        decoded: imageio.DecodedImage,
        records: list[DetectionRecord],
        options: Options,
        thresholds: dict[str, float],
        timings: dict[str, float],
        output: OutputSummary | None = None,
    ) -> Report:
        height, width = decoded.pixels.shape[:2]
        models = {t: self.detector(t).card.version for t in options.targets}
        shared = self.shared_detector(tuple(options.targets))
        if shared is not None:
            models["shared"] = shared.version
        settings = options.to_dict()
        for target, threshold in thresholds.items():  # the threshold used, not "null" for "the card's"
            settings[target]["threshold"] = threshold
        return Report(
            anonymizer=__version__,
            image=ImageSummary(width, height, decoded.format, decoded.grey, decoded.colour),
            detections=tuple(records),
            targets=tuple(options.targets),
            thresholds=thresholds,
            models=models,
            options=settings,
            timings_ms=timings,
            output=output,
        )


def expand_box(
    box: tuple[float, float, float, float], margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Enlarge by ``margin`` of the box size on every side, round outwards, clip to the image."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return (
        max(0, int(np.floor(x1 - dx))),
        max(0, int(np.floor(y1 - dy))),
        min(width, int(np.ceil(x2 + dx))),
        min(height, int(np.ceil(y2 + dy))),
    )


def _effect_spec(options: Options, target: str, logo: np.ndarray | None) -> EffectSpec:
    t = options.for_target(target)
    return EffectSpec(name=t.effect, shape=t.shape, strength=t.strength, blocks=t.blocks, color=t.color, logo=logo)


_logo = lru_cache(maxsize=8)(load_logo)  # a deployment's logo is decoded once, not per image


def summarize(report: Mapping) -> str:
    """One log-safe line: counts and timings, never pixels."""
    counts = ", ".join(f"{k}={v}" for k, v in report.get("counts", {}).items())
    return f"{counts} in {report.get('timings_ms', {}).get('total', 0):.0f} ms"
