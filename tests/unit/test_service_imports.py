"""Processes that only call the model server start without TensorFlow: its import costs about
3 s and 500 MB per process, which is most of a restarted encoder's or decoder's recovery time
(bench/chaos.py). They speak TensorFlow Serving's protocol through atelier.tfserving."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    "services.encoder.server",
    "services.encoder.tasks",
    "services.decoder.server",
    "services.retrieval.server",
    "services.recommender.server",
    "services.personalization.server",
    "services.personalization.tasks",
    "services.gateway.server",
)


@pytest.mark.parametrize("module", MODULES)
def test_service_starts_without_tensorflow(module):
    check = (
        f"import sys, {module}; "
        "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules); "
        "sys.exit(f'imported {heavy}' if heavy else 0)"
    )
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}  # read at import, never dialled
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_vendored_messages_are_tensorflow_servings_own():
    """One descriptor pool: a process that imports both sees the same message classes."""
    from tensorflow_serving.apis import predict_pb2

    from atelier.tfserving.tensorflow_serving.apis import predict_pb2 as vendored

    assert vendored.PredictRequest is predict_pb2.PredictRequest
