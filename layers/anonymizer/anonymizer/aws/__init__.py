"""Small adapters between AWS (S3, SQS, API Gateway) and the plain library.

The Lambda functions under ``functions/`` stay thin: they parse the event with Powertools,
call one function from here and turn its result back into what AWS expects.

* :mod:`.storage` — S3 reads (size-checked before download), writes with metadata and tags,
  presigned URLs, per-object options from metadata/tags.
* :mod:`.s3_flow` — one S3 object: read, anonymize in memory, publish to the output bucket.
* :mod:`.api_flow` — API Gateway responses: image, JSON report, errors, uploads, results,
  the OpenAPI document.

Local emulation (moto's HTTP server, ``anonymize local-run`` / ``serve``) is laptop-only and lives
in ``anonymizer_local`` outside the layer; nothing here imports it.

This module imports nothing from boto3 so that importing it stays cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "LOCAL_ONLY_EFFECTS",
    "get_anonymizer",
    "report_counts",
    "report_models",
    "request_option_values",
    "set_anonymizer",
]

_lock = threading.Lock()
_anonymizer: Any = None


def get_anonymizer() -> Any:
    """The process-wide :class:`anonymizer.pipeline.Anonymizer`, created on first use.

    One per Lambda container (models are loaded once and reused by warm invocations).
    """
    global _anonymizer
    if _anonymizer is None:
        with _lock:
            if _anonymizer is None:
                from ..pipeline import Anonymizer

                _anonymizer = Anonymizer()
    return _anonymizer


def set_anonymizer(anonymizer: Any) -> Any:
    """Replace the process-wide anonymizer (tests, local tools); returns the previous one."""
    global _anonymizer
    with _lock:
        previous, _anonymizer = _anonymizer, anonymizer
    return previous


def report_counts(report: Mapping[str, Any]) -> dict[str, int]:
    """Number of faces and plates found, read from a pipeline report.

    Accepts ``report["counts"] = {"face": n, "plate": m}`` or, failing that, counts the
    ``report["detections"]`` entries by ``label``.
    """
    counts = {"face": 0, "plate": 0}
    given = report.get("counts")
    if isinstance(given, Mapping):
        for label in counts:
            value = given.get(label, given.get(label + "s", 0))
            counts[label] = int(value or 0)
        return counts
    for det in report.get("detections") or []:
        label = det.get("label") if isinstance(det, Mapping) else getattr(det, "label", None)
        if label in counts:
            counts[label] += 1
    return counts


def report_models(report: Mapping[str, Any]) -> dict[str, str]:
    """Model name -> version, read from a pipeline report (``models`` or ``model_versions``)."""
    models = report.get("models", report.get("model_versions"))
    if isinstance(models, Mapping):
        out = {}
        for name, value in models.items():
            if isinstance(value, Mapping):
                value = value.get("version", value.get("name", ""))
            out[str(name)] = str(value)
        return out
    if isinstance(models, list | tuple):
        out = {}
        for item in models:
            if isinstance(item, Mapping):
                name = item.get("label", item.get("name", str(len(out))))
                out[str(name)] = str(item.get("version", ""))
            else:
                out[str(len(out))] = str(item)
        return out
    return {}


# Effects that the API and the S3 flow neither offer nor accept: ``logo`` needs a PNG, which only
# the CLI and the library take (``--logo``); a request could name the effect but never send one.
LOCAL_ONLY_EFFECTS = frozenset({"logo"})


def request_option_values(values: Mapping[str, str] | None, source: str = "request") -> dict[str, str]:
    """A request's flat option map with deployment-only keys and local-only effects (``logo``)
    refused (InvalidOptionsError).

    Which keys only the deployment may set (ANONYMIZER_* environment) is the option table's
    ``deployment_only`` column: the pixel budget protects the function's memory.
    """
    from ..errors import InvalidOptionsError
    from ..options import SPECS, env_name, normalize_key

    out = {}
    for key, value in (values or {}).items():
        norm = normalize_key(key)
        spec = SPECS.get(norm.rpartition(".")[2])
        if spec is not None and spec.deployment_only:
            raise InvalidOptionsError(f"{key} cannot be set by the {source}; the deployment sets it ({env_name(norm)})")
        if norm.rpartition(".")[2] == "effect" and str(value).strip().lower() in LOCAL_ONLY_EFFECTS:
            raise InvalidOptionsError(
                f"{key}={str(value).strip()}: the {source} cannot use the logo effect (it needs a PNG, which only "
                "the CLI and the library take: --logo); use blur, pixelate, fill or deform"
            )
        out[norm] = str(value)
    return out
