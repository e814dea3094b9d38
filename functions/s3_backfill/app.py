"""S3 Batch Operations -> Lambda: anonymize objects already in a bucket (backfill).

Thin handler: :mod:`anonymizer.aws.batch` turns the invocation (schema 2.0) into one
:func:`anonymizer.aws.s3_flow.process_object` call per task and the answers Batch Operations
reads back (``Succeeded`` / ``TemporaryFailure`` / ``PermanentFailure`` with a message). Objects
already anonymized for the same content are skipped; each object version is processed at most
once at a time (idempotency table), and a completion event is sent per processed object.
The template's reserved concurrency bounds it, so a backfill cannot starve the live S3 flow.

Environment: OUTPUT_BUCKET, IDEMPOTENCY_TABLE, MAX_OBJECT_BYTES, EVENT_BUS_NAME, ANONYMIZER_*,
POWERTOOLS_SERVICE_NAME, POWERTOOLS_METRICS_NAMESPACE, POWERTOOLS_LOG_LEVEL.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from anonymizer.aws import batch, get_anonymizer, s3_flow
from anonymizer.aws.events import EventPublisher
from anonymizer.aws.storage import S3Storage

logger = Logger()

config = s3_flow.FlowConfig.from_env()
storage = S3Storage(max_object_bytes=config.max_object_bytes)
events = EventPublisher.from_env()
persistence_layer = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
idempotency_config = s3_flow.idempotency_config()


@idempotent_function(data_keyword_argument="ref", config=idempotency_config, persistence_store=persistence_layer)
def process_once(ref: s3_flow.ObjectRef) -> dict:
    """Runs the pipeline once per object version; a repeat returns the stored summary."""
    return s3_flow.process_object(ref, storage=storage, anonymizer=get_anonymizer(), config=config, events=events)


def process(ref: s3_flow.ObjectRef) -> dict:
    return process_once(ref=ref)


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    idempotency_config.register_lambda_context(context)
    answer = batch.handle_invocation(event, process=process, storage=storage, config=config)
    for result in answer["results"]:  # codes only: keys and messages stay in the job's report
        logger.info("task done", extra={"task_id": result["taskId"], "result": result["resultCode"]})
    return answer
