"""Integration fixtures: moto's real HTTP server (one per session), the deployed resources
(buckets, idempotency table, queue + DLQ, S3 -> SQS notification) reset before every test,
the real Lambda handlers loaded from ``functions/`` and the real Anonymizer behind a counter."""

from __future__ import annotations

import collections
import os
import urllib.request
from collections.abc import Callable
from types import ModuleType

import pytest

import anonymizer.aws as aws
from anonymizer_local.emulator import (
    LocalAws,
    LocalAwsNames,
    aws_environment,
    create_resources,
    free_port,
    load_function,
)

NAMES = LocalAwsNames(
    input_bucket="it-input",
    output_bucket="it-output",
    table="it-idempotency",
    queue="it-input-events",
    dlq="it-input-events-dlq",
)


def _default_targets() -> str:
    from anonymizer.detection import available_models

    return "face,plate" if "plate" in available_models() else "face"


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def aws_env(moto_endpoint: str):
    """The functions' environment for the whole session (fake credentials, moto endpoint)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in aws_environment(moto_endpoint, NAMES).items():
            mp.setenv(key, value)
        mp.setenv("ANONYMIZER_TARGETS", _default_targets())
        mp.setenv("POWERTOOLS_METRICS_NAMESPACE", "AnonymizerIntegration")
        mp.delenv("AWS_PROFILE", raising=False)
        yield dict(os.environ)


@pytest.fixture
def local(aws_env, moto_endpoint: str) -> LocalAws:
    """A fresh account: moto reset, then the resources the template deploys."""
    urllib.request.urlopen(urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST")).read()
    port = int(moto_endpoint.rsplit(":", 1)[1])
    helper = LocalAws(NAMES, port=port)  # attach to the session server, do not start another
    helper.resources = create_resources(NAMES)
    yield helper
    urllib.request.urlopen(urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST")).read()


class CountingAnonymizer:
    """The real Anonymizer, counting how often the pipeline runs."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: collections.Counter = collections.Counter()

    def anonymize(self, data, options):
        self.calls["anonymize"] += 1
        return self.inner.anonymize(data, options)

    def detect(self, data, options):
        self.calls["detect"] += 1
        return self.inner.detect(data, options)


@pytest.fixture(scope="session")
def real_anonymizer():
    from anonymizer.pipeline import Anonymizer

    return Anonymizer()


@pytest.fixture
def engine(real_anonymizer) -> CountingAnonymizer:
    counting = CountingAnonymizer(real_anonymizer)
    previous = aws.set_anonymizer(counting)
    yield counting
    aws.set_anonymizer(previous)


@pytest.fixture
def load_fn(local, monkeypatch) -> Callable[..., ModuleType]:
    """``load_fn("s3_anonymize", MAX_OBJECT_BYTES="1000")``: a cold start with extra env."""

    def load(name: str, **env: str) -> ModuleType:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return load_function(name)

    return load
