"""The query services' scale settings: index kind, probes, methods and shard, read once at start;
a bad value stops the service with a message naming the variable."""

from __future__ import annotations

import pytest

from atelier.latent import RANKING_METHODS
from services.common.queries import QuerySettings


@pytest.fixture(autouse=True)
def redis_url(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")


def test_defaults_are_exact_unsharded_and_every_method(monkeypatch):
    settings = QuerySettings.read("RETRIEVAL", 50053)
    assert settings.index.kind == "flat" and settings.shard is None
    assert settings.methods == RANKING_METHODS


def test_scale_settings_are_read(monkeypatch):
    for name, value in {
        "INDEX_KIND": "ivf",
        "NPROBE": "7",
        "SEARCH_METHODS": "fixed_eps, loglik",
        "SHARD_INDEX": "2",
        "SHARD_COUNT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    settings = QuerySettings.read("RETRIEVAL", 50053)
    assert (settings.index.kind, settings.index.nprobe) == ("ivf", 7)
    assert settings.methods == ("fixed_eps", "loglik")
    assert (settings.shard.index, settings.shard.count) == (2, 3)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SEARCH_METHODS", "fixed_eps,foo", "SEARCH_METHODS lists ['foo']"),
        ("SEARCH_METHODS", " , ", "SEARCH_METHODS lists nothing"),
        ("INDEX_KIND", "hnsw", "INDEX_KIND / NPROBE: index kind must be one of"),
        ("NPROBE", "0", "INDEX_KIND / NPROBE: nprobe"),
        ("SHARD_INDEX", "3", "SHARD_INDEX must be in 0..SHARD_COUNT-1"),
        ("SHARD_COUNT", "0", "SHARD_INDEX must be in 0..SHARD_COUNT-1"),
    ],
)
def test_bad_values_stop_the_service_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv("SHARD_COUNT", "3")
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        QuerySettings.read("RETRIEVAL", 50053)
    assert message in str(stopped.value)
