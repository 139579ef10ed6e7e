"""The query services' scale settings: index kind, probes, methods and shard, read once at start;
a bad value stops the service with a message naming the variable."""

from __future__ import annotations

import pytest

from atelier.latent import RANKING_METHODS
from atelier.search import IndexOptions
from services.common.queries import QuerySettings
from services.common.settings import variables
from services.recommender.config import Settings as RecommenderSettings
from services.retrieval.config import Settings as RetrievalSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in variables(RetrievalSettings).keys() | variables(RecommenderSettings).keys():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")


def test_defaults_are_exact_unsharded_and_every_method():
    settings = RetrievalSettings.from_env()
    assert settings.index == IndexOptions() and settings.index.kind == "flat"
    assert settings.shard is None and (settings.shard_index, settings.shard_count) == (0, 1)
    assert settings.methods == RANKING_METHODS
    assert (settings.kmeans_k, settings.max_abs_latent, settings.faiss_threads) == (16, 100.0, 1)
    assert settings.encoder_addr == "127.0.0.1:50051"


def test_each_service_listens_on_its_own_variables(monkeypatch):
    assert (RetrievalSettings.from_env().host, RetrievalSettings.from_env().port) == (
        "127.0.0.1",
        50053,
    )
    assert RecommenderSettings.from_env().port == 50054
    monkeypatch.setenv("RETRIEVAL_HOST", "0.0.0.0")
    monkeypatch.setenv("RETRIEVAL_PORT", "6001")
    monkeypatch.setenv("RECOMMENDER_PORT", "6002")
    retrieval, recommender = RetrievalSettings.from_env(), RecommenderSettings.from_env()
    assert (retrieval.host, retrieval.port) == ("0.0.0.0", 6001)
    assert (recommender.host, recommender.port) == ("127.0.0.1", 6002)
    # Each reads its own prefix only, and both the shared variables.
    assert {"RETRIEVAL_HOST", "RETRIEVAL_PORT"} <= variables(RetrievalSettings).keys()
    assert not {"RECOMMENDER_HOST", "RECOMMENDER_PORT"} & variables(RetrievalSettings).keys()
    shared = variables(RetrievalSettings).keys() & variables(RecommenderSettings).keys()
    assert {"SHARD_INDEX", "SHARD_COUNT", "SEARCH_METHODS", "INDEX_KIND", "NPROBE"} <= shared
    assert issubclass(RetrievalSettings, QuerySettings)


def test_scale_settings_are_read(monkeypatch):
    for name, value in {
        "INDEX_KIND": "ivf",
        "NPROBE": "7",
        "SEARCH_METHODS": "fixed_eps, loglik",
        "SHARD_INDEX": "2",
        "SHARD_COUNT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    settings = RetrievalSettings.from_env()
    assert (settings.index.kind, settings.index.nprobe) == ("ivf", 7)
    assert settings.methods == ("fixed_eps", "loglik")
    assert (settings.shard.index, settings.shard.count) == (2, 3)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SEARCH_METHODS", "fixed_eps,foo", "SEARCH_METHODS: unknown ranking methods ['foo']"),
        ("SEARCH_METHODS", " , ", "SEARCH_METHODS: no ranking method; choose from loglik"),
        ("INDEX_KIND", "hnsw", "INDEX_KIND: index kind must be one of"),
        ("NPROBE", "0", "NPROBE: Input should be greater than 0"),
        ("SHARD_INDEX", "3", "SHARD_INDEX: must be in 0..SHARD_COUNT-1 = 0..2, got 3"),
        ("SHARD_INDEX", "-1", "SHARD_INDEX: Input should be greater than or equal to 0"),
        ("SHARD_COUNT", "0", "SHARD_COUNT: Input should be greater than 0"),
        ("RECOMMENDER_PORT", "65536", "RECOMMENDER_PORT: Input should be less than or equal to"),
    ],
)
def test_bad_values_stop_the_service_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv("SHARD_COUNT", "3")
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        RecommenderSettings.from_env()
    assert message in str(stopped.value)
    assert str(stopped.value).startswith("environment variable ")
