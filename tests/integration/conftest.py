"""Integration fixtures: real redis-server, model server, gRPC services and Celery workers on free ports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from atelier.modelinfo import DECODER_NAME, ENCODER_NAME, ModelConfig, model_versions
from atelier.modelstore import export_model
from atelier.processes import start_redis
from atelier.store import CodeStore
from atelier.vae import Autoencoder
from services.common.launcher import local_suite

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def two_version_models(tmp_path_factory, models_dir) -> Path:
    """The committed model as version 1 and an untrained model of the same shape as version 2."""
    target = tmp_path_factory.mktemp("models")
    committed = model_versions(models_dir)[-1]
    for name in (ENCODER_NAME, DECODER_NAME):
        shutil.copytree(models_dir / name / str(committed), target / name / "1")
    export_model(
        Autoencoder(ModelConfig()), target, version=2, data_hash="untrained", epsilon_seed=2
    )
    return target


@pytest.fixture()
def redis_server(tmp_path):
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture()
def store(redis_server) -> CodeStore:
    return CodeStore.from_url(redis_server.url)


@pytest.fixture(scope="module")
def encoding_suite(tmp_path_factory, two_version_models):
    work = tmp_path_factory.mktemp("suite")
    env = {
        "QUEUE_VISIBILITY_TIMEOUT_SECONDS": "5",
        "ENCODE_CHUNK_SIZE": "32",
        # The tests write catalogues under pytest's temporary folder and read the fixtures.
        "CATALOGUE_ROOTS": os.pathsep.join([str(tmp_path_factory.getbasetemp()), str(FIXTURES)]),
    }
    with local_suite(work, two_version_models, workers=2, extra_env=env) as suite:
        yield suite
