"""API Gateway (REST, Lambda proxy) requests and responses for ``functions/api_anonymize``.

Routes (the handler only wires them to these functions):

* ``POST /anonymize`` — raw image bytes in the body, options in the query string; answers the
  anonymized image (binary, base64 in the proxy response) or, with ``?format=json``, the
  detections report. Requests and responses are capped by Lambda's 6 MB synchronous payload
  limit: larger ones get ``413 payload_too_large`` telling the client to use ``POST /uploads``.
* ``POST /uploads`` — a presigned POST (form upload) into ``UPLOAD_BUCKET/UPLOAD_PREFIX<id>``
  whose policy holds the file to ``MAX_OBJECT_BYTES`` (S3 refuses a bigger one at upload time);
  options travel as signed ``x-amz-meta-anonymize-*`` form fields and the S3 flow reads them,
  and so does the caller's digest (``x-amz-meta-anonymizer-owner``, see :func:`caller_digest`).
* ``GET /results/{id}`` — 202 while processing, 200 with a presigned GET URL and the report
  when done, 422 when the image could not be anonymized, 404 for an unknown id AND for an id
  that another caller uploaded (ids are not capabilities: results are bound to the uploader).
  Videos (``POST /uploads?kind=video``, deployments with the video state machine) answer 202
  with ``progress`` (phase, segments and frames done) and ``percent``, read from the video
  job's progress records (:mod:`anonymizer.video.progress`).
* ``GET /openapi.json`` — :func:`openapi_document`.

Errors are JSON ``{"error": code, "message": ...}`` with the error's ``http_status``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aws_lambda_powertools.event_handler import Response

from .. import __version__, web
from ..errors import (
    AnonymizerError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidOptionsError,
    UnsupportedImageError,
)
from ..imageio import CONTENT_TYPES
from ..options import (
    OUTPUT_FORMATS,
    TARGETS,
    Options,
    describe,
    normalize_key,
    openapi_parameters,
    options_from_env,
    parse_options,
)
from ..video import progress as video_progress
from ..video.start import DEFAULT_VIDEO_MAX_BYTES, VIDEO_OPTION_KEYS, VIDEO_UPLOAD_SUFFIX, job_id
from . import LOCAL_ONLY_EFFECTS, report_counts, request_option_values
from .s3_flow import REPORT_SUFFIX
from .storage import DEFAULT_MAX_OBJECT_BYTES, OWNER_METADATA, S3Storage, option_metadata

# Lambda's synchronous invocation payload limit (request and response, each, as sent: base64).
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
# Room for the rest of the event / response (headers, request context, JSON framing).
ENVELOPE_MARGIN = 64 * 1024
MAX_SYNC_BODY_CHARS = SYNC_PAYLOAD_LIMIT - ENVELOPE_MARGIN
DEFAULT_UPLOAD_PREFIX = "uploads/"
DEFAULT_URL_EXPIRES = 900
JSON = "application/json"
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class PayloadTooLargeError(ImageTooLargeError):
    """The request or the response would not fit the synchronous API: use POST /uploads."""

    code = "payload_too_large"
    http_status = 413


class NotFoundError(AnonymizerError):
    code = "not_found"
    http_status = 404


@dataclass(frozen=True)
class ApiConfig:
    output_bucket: str = ""
    upload_bucket: str = ""
    upload_prefix: str = DEFAULT_UPLOAD_PREFIX
    defaults: Options = field(default_factory=Options)
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    url_expires: int = DEFAULT_URL_EXPIRES
    video_work_bucket: str = ""  # set where the video state machine is deployed: video uploads on
    video_max_bytes: int = DEFAULT_VIDEO_MAX_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiConfig:
        """OUTPUT_BUCKET, UPLOAD_BUCKET, UPLOAD_PREFIX (``uploads/``), MAX_OBJECT_BYTES,
        VIDEO_WORK_BUCKET, VIDEO_MAX_OBJECT_BYTES, ANONYMIZER_* defaults; buckets may be empty
        when only POST /anonymize is deployed."""
        env = os.environ if env is None else env
        prefix = env.get("UPLOAD_PREFIX") or DEFAULT_UPLOAD_PREFIX
        return cls(
            output_bucket=env.get("OUTPUT_BUCKET", ""),
            upload_bucket=env.get("UPLOAD_BUCKET", ""),
            upload_prefix=prefix if prefix.endswith("/") else prefix + "/",
            defaults=options_from_env(env),
            max_object_bytes=int(env.get("MAX_OBJECT_BYTES") or DEFAULT_MAX_OBJECT_BYTES),
            url_expires=int(env.get("PRESIGNED_URL_EXPIRES") or DEFAULT_URL_EXPIRES),
            video_work_bucket=env.get("VIDEO_WORK_BUCKET", ""),
            video_max_bytes=int(env.get("VIDEO_MAX_OBJECT_BYTES") or DEFAULT_VIDEO_MAX_BYTES),
        )


# -- responses ----------------------------------------------------------------------------------


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=JSON,
        body=json.dumps(body, default=str),
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error_response(exc: AnonymizerError) -> Response:
    """``{"error": code, "message": ...}`` with the error's HTTP status."""
    return json_response(exc.http_status, {"error": exc.code, "message": str(exc)})


def internal_error_response() -> Response:
    """For unexpected exceptions: no details leak to the client (they are in the logs)."""
    return json_response(500, {"error": "internal_error", "message": "internal error; nothing was published"})


def not_found_response(path: str = "") -> Response:
    route = f" {path}" if path else ""
    return json_response(404, {"error": "not_found", "message": f"no such route{route}; see GET /openapi.json"})


# -- request pieces -----------------------------------------------------------------------------


def header(headers: Mapping[str, str] | None, name: str, default: str = "") -> str:
    """Case-insensitive header lookup (API Gateway keeps the client's spelling)."""
    name = name.lower()
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return default


def request_body(event: Mapping[str, Any]) -> bytes:
    """The raw request body of a REST proxy event, binary-safe.

    Raises PayloadTooLargeError over the synchronous payload limit, and InvalidImageError when
    an image arrived as text (the API is missing binary media types ``*/*``).
    """
    body = event.get("body") or ""
    if len(body) > MAX_SYNC_BODY_CHARS:
        raise PayloadTooLargeError(
            f"request body is {len(body)} bytes as sent; the synchronous API accepts at most "
            f"about {MAX_SYNC_BODY_CHARS * 3 // 4} bytes of image: use POST /uploads for larger images"
        )
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImageError("body is flagged base64 but is not valid base64") from None
    content_type = header(event.get("headers"), "content-type").lower()
    if body and (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise InvalidImageError("the image arrived as text, not binary: the API must list binary media types (*/*)")
    return body.encode("utf-8")


def query_values(event: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()}


def caller_principal(event: Mapping[str, Any]) -> str:
    """Who is calling, as API Gateway vouches for it: the IAM principal (``AWS_IAM`` auth), the
    token's subject (a JWT/Cognito authorizer), else the API key's id; ``anonymous`` when none
    (the local server, a deployment without auth)."""
    ctx = event.get("requestContext") or {}
    identity = ctx.get("identity") or {}
    authorizer = ctx.get("authorizer") or {}
    claims = authorizer.get("claims") or (authorizer.get("jwt") or {}).get("claims") or {}
    if identity.get("userArn"):
        return "iam:" + str(identity["userArn"])
    if claims.get("sub"):
        return f"jwt:{claims.get('iss', '')}:{claims['sub']}"
    if identity.get("apiKeyId"):
        return "key:" + str(identity["apiKeyId"])
    return "anonymous"


def caller_digest(event: Mapping[str, Any]) -> str:
    """The caller as stored with an upload: a digest, so object metadata and reports name no key
    id or ARN, yet the same caller always gets the same value."""
    return hashlib.sha256(caller_principal(event).encode("utf-8")).hexdigest()[:32]


def request_options(values: Mapping[str, str], defaults: Options) -> tuple[Options, bool]:
    """Options from the query string; ``format=json`` asks for the report instead of the image."""
    values = dict(values)
    want_json = values.get("format", "").strip().lower() == "json"
    if want_json:
        values.pop("format")
    return parse_options(request_option_values(values, "request"), defaults=defaults), want_json


# -- routes -------------------------------------------------------------------------------------


def anonymize(event: Mapping[str, Any], *, anonymizer: Any, defaults: Options) -> tuple[Response, dict[str, Any]]:
    """POST /anonymize -> (response, summary for metrics). Raises AnonymizerError for 4xx."""
    # curl --data-binary without -H sends x-www-form-urlencoded: the bytes are still the image
    content_type = header(event.get("headers"), "content-type").lower()
    if content_type.startswith("multipart/"):
        raise UnsupportedImageError("send the raw image bytes as the body (curl --data-binary @face.jpg), not a form")
    options, want_json = request_options(query_values(event), defaults)
    data = request_body(event)
    if not data:
        raise InvalidImageError("empty body: send the image bytes as the request body")

    started = time.perf_counter()
    if want_json:
        report = anonymizer.detect(data, options)
        latency_ms = (time.perf_counter() - started) * 1000.0
        return json_response(200, report), _summary(report, latency_ms)

    result = anonymizer.anonymize(data, options)
    latency_ms = (time.perf_counter() - started) * 1000.0
    if (len(result.data) + 2) // 3 * 4 > MAX_SYNC_BODY_CHARS:
        raise PayloadTooLargeError(
            f"the anonymized image is {len(result.data)} bytes, too large for a synchronous response: use POST /uploads"
        )
    counts = report_counts(result.report)
    response = Response(
        status_code=200,
        content_type=result.content_type,
        body=result.data,  # bytes: Powertools base64-encodes and sets isBase64Encoded
        headers={
            "Cache-Control": "no-store",
            "X-Anonymizer-Faces": str(counts["face"]),
            "X-Anonymizer-Plates": str(counts["plate"]),
        },
    )
    return response, _summary(result.report, latency_ms)


def _summary(report: Mapping[str, Any], latency_ms: float) -> dict[str, Any]:
    counts = report_counts(report)
    return {"faces": counts["face"], "plates": counts["plate"], "latency_ms": round(latency_ms, 1)}


def create_upload(event: Mapping[str, Any], *, storage: S3Storage, config: ApiConfig) -> Response:
    """POST /uploads: a presigned POST for one image of 1..MAX_OBJECT_BYTES bytes, or with
    ``kind=video`` one video of 1..VIDEO_MAX_OBJECT_BYTES (key ``<id>.mp4``: the S3 flow routes
    it to the video state machine; ``audio`` and ``detect_every`` are accepted too).

    Options come from the query string and/or a JSON body ``{"options": {...}}``; they are
    validated now (400 on error) and signed into the POST policy as ``x-amz-meta-anonymize-*``
    form fields, with the caller's digest (``x-amz-meta-anonymizer-owner``): the client sends
    ``upload.fields`` as they are, then the file as the form's last field, ``file``
    (``curl -F key=... -F ... -F file=@big.jpg URL``).
    """
    if not config.upload_bucket:
        raise NotFoundError("uploads are not enabled on this deployment (UPLOAD_BUCKET is not set)")
    values = query_values(event)
    kind = values.pop("kind", "image").strip().lower()
    raw = request_body(event)
    if raw.strip():
        try:
            payload = json.loads(raw)
        except ValueError:
            raise InvalidOptionsError('body must be JSON: {"options": {"effect": "pixelate"}}') from None
        opts = payload.get("options", {}) if isinstance(payload, dict) else None
        if not isinstance(opts, dict):
            raise InvalidOptionsError('body must be JSON: {"options": {"effect": "pixelate"}}')
        values.update({str(k): str(v) for k, v in opts.items()})
        kind = str(payload.get("kind", kind)).strip().lower()
    if kind not in ("image", "video"):
        raise InvalidOptionsError("kind must be image or video")
    video = _video_upload_values(values, config) if kind == "video" else {}
    checked = request_option_values(values, "request")
    parse_options(checked, defaults=config.defaults)  # 400 now rather than a failed object later

    upload_id = uuid.uuid4().hex
    key = config.upload_prefix + upload_id + (VIDEO_UPLOAD_SUFFIX if kind == "video" else "")
    max_bytes = config.video_max_bytes if kind == "video" else config.max_object_bytes
    metadata = {**option_metadata({**checked, **video}), OWNER_METADATA: caller_digest(event)}
    url, fields = storage.presign_post(
        config.upload_bucket, key, max_bytes=max_bytes, expires=config.url_expires, metadata=metadata
    )
    result_path = f"/results/{upload_id}"
    body = {
        "id": upload_id,
        "kind": kind,
        "upload": {
            "method": "POST",
            "url": url,
            "fields": fields,
            "file_field": "file",
            "expires_in": config.url_expires,
            "max_bytes": max_bytes,
        },
        "result": {"method": "GET", "path": result_path, "url": _base_url(event) + result_path},
    }
    return json_response(201, body, headers={"Location": _base_url(event) + result_path})


def _video_upload_values(values: dict[str, str], config: ApiConfig) -> dict[str, str]:
    """Pop and check the video-only options of a video upload (400 now, not a failed job later)."""
    if not config.video_work_bucket:
        from ..errors import UnsupportedVideoError

        raise UnsupportedVideoError("video uploads are not enabled on this deployment (EnableVideo=false)")
    from ..video.pipeline import VideoSettings

    video = {normalize_key(k): values.pop(k) for k in list(values) if normalize_key(k) in VIDEO_OPTION_KEYS}
    VideoSettings().with_values(video)
    return video


def get_result(event: Mapping[str, Any], upload_id: str, *, storage: S3Storage, config: ApiConfig) -> Response:
    """GET /results/{id}: done (200, presigned GET + report), processing (202; a video's with
    its progress), failed (422).

    Only for the caller who uploaded: everybody else gets the same 404 as for an unknown id, so
    an id seen in a log or a URL reveals nothing. The uploader is read from the report (written
    by the S3 flow from the signed upload metadata) or, before there is one, from the upload.
    An image upload is ``<id>``, a video upload ``<id>.mp4``: the image key is looked up first,
    so images cost no more requests than before.
    """
    if not _UPLOAD_ID.fullmatch(upload_id or "") or not config.upload_bucket:
        raise NotFoundError(f"unknown upload id {upload_id!r}")
    unknown = NotFoundError(f"no upload with id {upload_id} for this caller (not uploaded yet, or expired)")
    caller = caller_digest(event)
    key = config.upload_prefix + upload_id
    found = _result(upload_id, key, caller, unknown, storage=storage, config=config, video=False)
    if found is None and config.video_work_bucket:
        found = _result(
            upload_id, key + VIDEO_UPLOAD_SUFFIX, caller, unknown, storage=storage, config=config, video=True
        )
    if found is None:
        raise unknown
    return found


def _result(
    upload_id: str,
    key: str,
    caller: str,
    unknown: NotFoundError,
    *,
    storage: S3Storage,
    config: ApiConfig,
    video: bool,
) -> Response | None:
    """The answer for the upload at ``key``; None when there is neither a report nor an upload."""
    report = storage.read_json(config.output_bucket, key + REPORT_SUFFIX)
    if isinstance(report, dict):
        if not hmac_equal(str(report.get("owner", "")), caller):
            raise unknown
        if report.get("status") == "failed":
            return json_response(
                422,
                {
                    "id": upload_id,
                    "status": "failed",
                    "error": report.get("error", "error"),
                    "message": report.get("message", "the image could not be anonymized"),
                },
            )
        out = storage.head(config.output_bucket, key)
        if out is not None:
            return json_response(
                200,
                {
                    "id": upload_id,
                    "status": "done",
                    "video" if video else "image": {
                        "url": storage.presign_get(
                            config.output_bucket, key, expires=config.url_expires, content_type=out.content_type
                        ),
                        "content_type": out.content_type,
                        "size": out.size,
                        "expires_in": config.url_expires,
                    },
                    **(_video_report_fields(report, key, storage, config) if video else {"report": report}),
                },
            )
    src = storage.head(config.upload_bucket, key)
    if src is None:
        return None
    if not hmac_equal(src.metadata.get(OWNER_METADATA, ""), caller):
        raise unknown
    if storage.get_tags(config.upload_bucket, key).get("anonymizer-status") == "failed":
        return json_response(  # tagged, but its report could not be written
            422, {"id": upload_id, "status": "failed", "error": "error", "message": "the image could not be anonymized"}
        )
    body: dict[str, Any] = {"id": upload_id, "status": "processing"}
    if video:
        body["progress"] = video_progress_of(src, storage=storage, config=config)
        body["percent"] = video_progress.percent(body["progress"])
    return json_response(202, body, headers={"Retry-After": "5" if video else "2"})


VIDEO_REPORT_BULK = ("tracks", "segments")  # per-track lists, left to report_url


def _video_report_fields(report: dict[str, Any], key: str, storage: S3Storage, config: ApiConfig) -> dict[str, Any]:
    """A video's report without its tracks (an hour of street footage has thousands: too big for
    an API response; the counts stay) and a presigned link to the whole report."""
    summary = {k: v for k, v in report.items() if k not in VIDEO_REPORT_BULK}
    url = storage.presign_get(
        config.output_bucket, key + REPORT_SUFFIX, expires=config.url_expires, content_type="application/json"
    )
    return {"report": summary, "report_url": url}


def video_progress_of(src: Any, *, storage: S3Storage, config: ApiConfig) -> dict[str, Any]:
    """The progress of the video job started for this upload (``queued`` before it writes any).

    The job id is what the S3 flow derived from the event: bucket, key and version id, or the
    eTag where the event carried no version; both are tried. A progress record that cannot be
    read shows as ``queued``: a poll must not fail because of it.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    seen: list[str] = []
    for version in (src.version_id, None):
        ident = job_id({"bucket": src.bucket, "key": src.key, "version_id": version, "etag": src.etag})
        if ident in seen:
            continue
        seen.append(ident)
        try:
            found = video_progress.read(storage.client, config.video_work_bucket, ident)
        except (BotoCoreError, ClientError):
            found = None
        if found is not None:
            return found
    return video_progress.queued()


def hmac_equal(a: str, b: str) -> bool:
    """Constant-time string comparison (owner digests)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _base_url(event: Mapping[str, Any]) -> str:
    """``https://api-id.execute-api.region.amazonaws.com/stage`` (or the local server's URL)."""
    headers = event.get("headers") or {}
    ctx = event.get("requestContext") or {}
    # API Gateway's own record of the domain first: a client's Host header must not steer the
    # URLs handed back (result.url, Location, the OpenAPI servers entry)
    host = ctx.get("domainName") or header(headers, "host")
    if not host:
        return ""
    proto = header(headers, "x-forwarded-proto", "https")
    stage = ctx.get("stage") or ""
    # The stage is in the path on execute-api hosts, not on custom domains or locally.
    prefix = f"/{stage}" if stage and host.endswith(".amazonaws.com") else ""
    return f"{proto}://{host}{prefix}"


# -- OpenAPI ------------------------------------------------------------------------------------


def openapi_document(server_url: str = "") -> dict[str, Any]:
    """The OpenAPI 3 description of this API (served at GET /openapi.json)."""
    error = {"$ref": "#/components/schemas/Error"}

    def err(description: str) -> dict:
        return {"description": description, "content": {JSON: {"schema": error}}}

    # Derived from the option table (every key, per-target spellings included) so it cannot drift;
    # format is declared below with its extra `json` value.
    option_params = [_remote_only(p) for p in openapi_parameters() if p["name"] != "format"]
    format_param = _param(
        "format",
        "Output format, or `json` for the detections report instead of the image.",
        {"type": "string", "enum": [*OUTPUT_FORMATS, "json"]},
    )
    kind_param = _param(
        "kind",
        "`video` for a video upload (deployments with EnableVideo; `audio=keep|drop` and `detect_every=1..10` "
        "are accepted too); `image` by default.",
        {"type": "string", "enum": ["image", "video"], "default": "image"},
    )
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Image anonymizer",
            "version": __version__,
            "description": "Finds faces and licence plates and makes them unrecognisable. Per-target "
            "options use a prefix (`face.effect=pixelate`). Images over about 4.5 MB go through "
            "`POST /uploads`. Every request sends the API key in the `x-api-key` header (deployments "
            "with `ApiAuth=AWS_IAM` also sign requests with SigV4). The `logo` effect is not offered "
            "here: it needs a PNG, which only the CLI and the library take (`--logo`).",
        },
        "security": [{"ApiKey": []}],
        "paths": {
            "/anonymize": {
                "post": {
                    "summary": "Anonymize one image",
                    "operationId": "anonymize",
                    "parameters": [format_param, *option_params],
                    "requestBody": {
                        "required": True,
                        "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "The anonymized image, or the report with format=json.",
                            "headers": {
                                "X-Anonymizer-Faces": {"schema": {"type": "integer"}},
                                "X-Anonymizer-Plates": {"schema": {"type": "integer"}},
                            },
                            "content": {
                                "image/*": {"schema": {"type": "string", "format": "binary"}},
                                JSON: {"schema": {"type": "object"}},
                            },
                        },
                        "400": err("Invalid image or options."),
                        "413": err("Too large: use POST /uploads."),
                        "415": err("Unsupported image (e.g. animated)."),
                        "500": err("Detection failed; nothing was published."),
                    },
                }
            },
            "/uploads": {
                "post": {
                    "summary": "Get a presigned URL to upload a large image, or a video",
                    "operationId": "createUpload",
                    "parameters": [kind_param, *option_params],
                    "requestBody": {
                        "required": False,
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "options": {"type": "object"},
                                        "kind": {"type": "string", "enum": ["image", "video"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "POST upload.fields then the image (form field `file`) to upload.url, "
                            "then poll result.url.",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Upload"}}},
                        },
                        "400": err("Invalid options."),
                    },
                }
            },
            "/results/{id}": {
                "get": {
                    "summary": "Status and result of an upload",
                    "operationId": "getResult",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "Done: image.url is a presigned GET URL; report is the detections report.",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Result"}}},
                        },
                        "202": {
                            "description": "Still processing; retry after Retry-After seconds. A video "
                            "also says how far it is: progress and percent.",
                            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Result"}}},
                        },
                        "404": err("Unknown id, not uploaded yet, or uploaded by another caller."),
                        "422": err("The image or video could not be anonymized."),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3 document", "content": {JSON: {}}}},
                }
            },
            "/": {
                "get": {
                    "summary": "The web page: drop images, compare before/after, download (no API key needed)",
                    "operationId": "webPage",
                    "security": [],
                    "responses": {"200": {"description": "One self-contained HTML page", "content": {"text/html": {}}}},
                }
            },
            "/options": {
                "get": {
                    "summary": "The option table with this deployment's defaults and the size limits (the page's form)",
                    "operationId": "options",
                    "security": [],
                    "responses": {"200": {"description": "options, targets, accept, limits", "content": {JSON: {}}}},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "ApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The stack's API key: `aws apigateway get-api-key --api-key <ApiKeyId> "
                    "--include-value`. Results are bound to the caller that uploaded.",
                }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "Upload": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "upload": {
                            "type": "object",
                            "properties": {
                                "method": {"type": "string", "enum": ["POST"]},
                                "url": {"type": "string"},
                                "fields": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                    "description": "Form fields to send as they are, before the file.",
                                },
                                "file_field": {"type": "string", "description": "The file's form field (last)."},
                                "expires_in": {"type": "integer"},
                                "max_bytes": {"type": "integer", "description": "S3 refuses a larger file."},
                            },
                        },
                        "result": {
                            "type": "object",
                            "properties": {
                                "method": {"type": "string"},
                                "path": {"type": "string"},
                                "url": {"type": "string"},
                            },
                        },
                    },
                },
                "Result": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "status": {"type": "string", "enum": ["processing", "done", "failed"]},
                        "image": {"type": "object", "description": "Done (an image): url, content_type, size."},
                        "video": {"type": "object", "description": "Done (a video): url, content_type, size."},
                        "report": {
                            "type": "object",
                            "description": "The report (docs/report.schema.json); a video's without its "
                            "per-track lists (tracks, segments; counts stay): the whole report is at report_url.",
                        },
                        "report_url": {"type": "string", "description": "Videos: presigned GET of the whole report."},
                        "percent": {"type": "integer", "minimum": 0, "maximum": 100, "description": "Videos."},
                        "progress": {"$ref": "#/components/schemas/VideoProgress"},
                    },
                },
                "VideoProgress": {
                    "type": "object",
                    "description": "A video while processing (202). Segments run in parallel; frames are "
                    "counted when their segment is done.",
                    "required": ["phase"],
                    "properties": {
                        "phase": {"type": "string", "enum": list(video_progress.PHASES)},
                        "started_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "segments": {
                            "type": "object",
                            "properties": {
                                "total": {"type": "integer"},
                                "done": {"type": "integer"},
                                "running": {"type": "integer"},
                            },
                        },
                        "frames": {
                            "type": "object",
                            "properties": {"total": {"type": "integer"}, "done": {"type": "integer"}},
                        },
                    },
                },
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


def _remote_only(param: dict) -> dict:
    """An option's parameter without the effects the API does not offer (``logo``)."""
    enum = param.get("schema", {}).get("enum")
    if not enum or not LOCAL_ONLY_EFFECTS & set(enum):
        return param
    schema = {**param["schema"], "enum": [v for v in enum if v not in LOCAL_ONLY_EFFECTS]}
    return {**param, "schema": schema}


def _param(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def openapi_response(event: Mapping[str, Any]) -> Response:
    return json_response(200, openapi_document(_base_url(event)), headers={"Cache-Control": "max-age=300"})


# -- the web page -------------------------------------------------------------------------------


def options_document(config: ApiConfig) -> dict[str, Any]:
    """GET /options: the option table as this deployment applies it (its defaults included), and
    what the page needs to route each file: sizes for the synchronous and the presigned flow."""
    return {
        "version": __version__,
        "options": [_remote_option(o) for o in describe(config.defaults) if not o.get("deployment_only")],
        "targets": list(TARGETS),
        "accept": sorted(set(CONTENT_TYPES.values())),
        "limits": {
            "sync_bytes": MAX_SYNC_BODY_CHARS * 3 // 4,
            "upload_bytes": config.max_object_bytes,
            "uploads": bool(config.upload_bucket and config.output_bucket),
        },
        "logo": False,  # no logo upload through the API yet: the page offers no logo effect
    }


def _remote_option(option: dict[str, Any]) -> dict[str, Any]:
    """An option-table row without the effects the API does not offer (``logo``)."""
    if option.get("key") != "effect" or not option.get("choices"):
        return option
    return {**option, "choices": [c for c in option["choices"] if c not in LOCAL_ONLY_EFFECTS]}


def options_response(config: ApiConfig) -> Response:
    return json_response(200, options_document(config), headers={"Cache-Control": "no-cache"})


def page_response(*, storage: S3Storage, config: ApiConfig) -> Response:
    """GET /: the page, with a CSP that lets it reach only this API and the presigned S3 URLs."""
    origins = presigned_origins(storage, config) if options_document(config)["limits"]["uploads"] else []
    return Response(
        status_code=200,
        content_type=web.HTML,
        body=web.page().html.decode("utf-8"),
        headers=web.security_headers(origins),
    )


def presigned_origins(storage: S3Storage, config: ApiConfig) -> list[str]:
    """Scheme and host of the presigned POST and GET URLs (signed locally; no request is made)."""
    key = config.upload_prefix + "0" * 32
    urls = [
        storage.presign_post(config.upload_bucket, key, max_bytes=1, expires=60)[0],
        storage.presign_get(config.output_bucket, key, expires=60),
    ]
    return sorted({f"{part.scheme}://{part.netloc}" for part in map(urlsplit, urls)})
