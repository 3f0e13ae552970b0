"""Prefect retries only transient tracking failures: never a validation failure, NaN or a bug."""

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from components.training.loop import NonFiniteError
from flows.tasks.decision_tasks import transient


class FailedState:
    def __init__(self, error: BaseException):
        self.error = error

    def result(self):
        raise self.error


@pytest.mark.parametrize(
    "error, retried",
    [
        (ConnectionError("connection refused"), True),
        (requests.exceptions.ReadTimeout("read timed out"), True),
        (MlflowException("server error", error_code=INTERNAL_ERROR), True),
        (MlflowException("bad parameter", error_code=INVALID_PARAMETER_VALUE), False),
        (NonFiniteError("ppo", 3, "kl"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_transient_errors_are_retried(error, retried):
    assert transient(None, None, FailedState(error)) is retried
