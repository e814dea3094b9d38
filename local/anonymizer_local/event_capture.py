"""Completion events seen locally: a rule on moto's EventBridge sends them to an SQS queue.

What a pipeline would do in AWS (an EventBridge rule whose target is a queue), for the tests and
``tools/backfill_run.py``: :func:`capture_events` sets the rule up, :func:`drain` reads and deletes
what arrived.
"""

from __future__ import annotations

import json
from typing import Any


def capture_events(aws: Any, *, source: str = "anonymizer", name: str = "completion-events") -> str:
    """A rule on the default bus sending every ``source`` event to a new queue; the queue's URL.

    ``aws`` is anything with ``client(service)`` (:class:`anonymizer_local.emulator.LocalAws`).
    """
    sqs, events = aws.client("sqs"), aws.client("events")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=f"{name}-rule", EventPattern=json.dumps({"source": [source]}), State="ENABLED")
    events.put_targets(Rule=f"{name}-rule", Targets=[{"Id": "queue", "Arn": arn}])
    return url


def drain(aws: Any, url: str) -> list[dict]:
    """Every event in the queue now (parsed), removed from it."""
    sqs, out = aws.client("sqs"), []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        out += [json.loads(m["Body"]) for m in got]
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
        sqs.delete_message_batch(QueueUrl=url, Entries=entries)
    return out
