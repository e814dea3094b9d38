"""API Gateway (REST) -> Lambda: anonymize an image in the request, or hand out upload URLs.

Thin handler: Powertools routes the request, :mod:`anonymizer.aws.api_flow` builds responses.
Routes: POST /anonymize, GET /openapi.json, POST /uploads, GET /results/{id}, and the web page:
GET / (the page) and GET /options (its form, from the option table).

Environment: OUTPUT_BUCKET, UPLOAD_BUCKET, UPLOAD_PREFIX, MAX_OBJECT_BYTES, PRESIGNED_URL_EXPIRES,
VIDEO_WORK_BUCKET and VIDEO_MAX_OBJECT_BYTES (video uploads and their progress; set only with
video enabled), ANONYMIZER_* (option defaults), POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE,
POWERTOOLS_LOG_LEVEL.
The API must list binary media types ``*/*`` so that images pass through as bytes.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from anonymizer.aws import api_flow, get_anonymizer
from anonymizer.aws.storage import S3Storage
from anonymizer.errors import AnonymizerError

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Anonymizer"))
app = APIGatewayRestResolver()

config = api_flow.ApiConfig.from_env()
storage = S3Storage(max_object_bytes=config.max_object_bytes)


@app.post("/anonymize")
@tracer.capture_method
def anonymize() -> Response:
    response, summary = api_flow.anonymize(
        app.current_event.raw_event, anonymizer=get_anonymizer(), defaults=config.defaults
    )
    metrics.add_metric(name="ObjectsProcessed", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="FacesFound", unit=MetricUnit.Count, value=summary["faces"])
    metrics.add_metric(name="PlatesFound", unit=MetricUnit.Count, value=summary["plates"])
    metrics.add_metric(name="LatencyMs", unit=MetricUnit.Milliseconds, value=summary["latency_ms"])
    logger.info("anonymized", extra=summary)
    return response


@app.get("/openapi.json")
def openapi() -> Response:
    return api_flow.openapi_response(app.current_event.raw_event)


@app.get("/")
def page() -> Response:
    return api_flow.page_response(storage=storage, config=config)


@app.get("/options")
def options() -> Response:
    return api_flow.options_response(config)


@app.post("/uploads")
@tracer.capture_method
def create_upload() -> Response:
    return api_flow.create_upload(app.current_event.raw_event, storage=storage, config=config)


@app.get("/results/<upload_id>")
@tracer.capture_method
def get_result(upload_id: str) -> Response:
    return api_flow.get_result(app.current_event.raw_event, upload_id, storage=storage, config=config)


@app.exception_handler(AnonymizerError)
def anonymizer_error(exc: AnonymizerError) -> Response:
    if exc.http_status >= 500:
        metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
        logger.exception("request failed", extra={"error": exc.code})
    else:
        logger.info("request rejected", extra={"error": exc.code, "status": exc.http_status})
    return api_flow.error_response(exc)


@app.not_found
def not_found(exc: NotFoundError) -> Response:
    return api_flow.not_found_response(app.current_event.path)


@app.exception_handler(Exception)
def unexpected_error(exc: Exception) -> Response:
    if isinstance(exc, ServiceError):
        return api_flow.json_response(exc.status_code, {"error": "bad_request", "message": exc.msg})
    metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
    logger.exception("unexpected error; nothing returned")
    return api_flow.internal_error_response()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)
