"""S3 -> SQS -> Lambda: anonymize every image created in the input bucket.

Thin handler: Powertools parses the SQS batch, :mod:`anonymizer.aws.s3_flow` does the work.
Each SQS message carries one S3 event notification; a record whose object fails transiently is
reported in ``batchItemFailures`` (ReportBatchItemFailures) so only it is retried and, in the
end, lands in the DLQ. A permanent failure (not an image, too big, bad options) is recorded once
(failure report + tags, see :func:`anonymizer.aws.s3_flow.record_failure`) and not retried.
Each object is processed at most once per version/eTag (idempotency table).

The SQS messages are S3 event notifications (S3 -> SQS) or S3 "Object Created" events from an
EventBridge rule (EventBridge -> SQS); the template's InputWiring parameter picks one.

Environment: OUTPUT_BUCKET, IDEMPOTENCY_TABLE, MAX_OBJECT_BYTES, DELETE_ORIGINAL, EVENT_BUS_NAME (completion
events), ANONYMIZER_* (option defaults), POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE, POWERTOOLS_LOG_LEVEL.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from anonymizer.aws import get_anonymizer, s3_flow
from anonymizer.aws.events import EventPublisher
from anonymizer.aws.storage import S3Storage
from anonymizer.errors import AnonymizerError

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Anonymizer"))

config = s3_flow.FlowConfig.from_env()
storage = S3Storage(max_object_bytes=config.max_object_bytes)
events = EventPublisher.from_env()  # EVENT_BUS_NAME: completion events (None: none sent)
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
persistence_layer = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
idempotency_config = s3_flow.idempotency_config()


@idempotent_function(data_keyword_argument="ref", config=idempotency_config, persistence_store=persistence_layer)
def process_once(ref: s3_flow.ObjectRef) -> dict:
    """Runs the pipeline once per object version; a repeat returns the stored summary."""
    summary = s3_flow.process_object(ref, storage=storage, anonymizer=get_anonymizer(), config=config, events=events)
    if summary["status"] == "ok":  # metrics only here: a replayed event is not a new object
        metrics.add_metric(name="ObjectsProcessed", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="FacesFound", unit=MetricUnit.Count, value=summary["faces"])
        metrics.add_metric(name="PlatesFound", unit=MetricUnit.Count, value=summary["plates"])
        metrics.add_metric(name="LatencyMs", unit=MetricUnit.Milliseconds, value=summary["latency_ms"])
    if summary["status"] == "failed":  # permanent (not an image, too big): recorded once, never retried
        metrics.add_metric(name="ObjectsRejected", unit=MetricUnit.Count, value=1)
        logger.warning("object rejected; nothing published", extra={"error": summary["error"]})
        return summary
    logger.info("object done", extra={k: v for k, v in summary.items() if k != "models"})
    return summary


@tracer.capture_method
def record_handler(record: SQSRecord) -> list[dict]:
    logger.set_correlation_id(record.message_id)
    summaries = []
    for ref in s3_flow.refs_from_sqs_body(record.body):
        logger.append_keys(bucket=ref.bucket, key=ref.key)
        try:
            summaries.append(process_once(ref=ref))
        except AnonymizerError as exc:
            metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
            log = logger.warning if exc.http_status < 500 else logger.exception
            log("object failed; nothing published", extra={"error": exc.code, "reason": str(exc)})
            raise
        except Exception:
            metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=1)
            logger.exception("object failed; nothing published")
            raise
        finally:
            logger.remove_keys(["bucket", "key"])
    return summaries


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    idempotency_config.register_lambda_context(context)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
