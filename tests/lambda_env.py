"""The Lambda functions' environment under moto, for tests that import a handler in-process."""

from __future__ import annotations

import contextlib

import pytest


@contextlib.contextmanager
def mock_lambda_env(**env: str):
    """Fake credentials and moto in-process, with the functions' environment (plus ``env``)."""
    from moto import mock_aws

    base = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "anonymizer",
        "POWERTOOLS_METRICS_NAMESPACE": "AnonymizerTest",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        for key, value in {**base, **env}.items():
            mp.setenv(key, value)
        with mock_aws():
            yield
