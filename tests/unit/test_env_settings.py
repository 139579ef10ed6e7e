"""Every service's environment settings: each variable documented, the defaults as they always
were, and a bad value stopping the process with a message that names the variable."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from atelier.confinement import DEFAULT_ROOTS, CatalogueRoots
from atelier.latent import RANKING_METHODS
from atelier.search import IndexOptions
from services.common.auth import AuthSettings
from services.common.settings import AuthEnvironment, variables

PACKAGES = ("decoder", "encoder", "modelserver", "personalization", "recommender", "retrieval")
REDIS_URL = "redis://127.0.0.1:1/0"


def settings_class(package: str) -> type[BaseSettings]:
    return importlib.import_module(f"services.{package}.config").Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Only what a test sets: none of the suite's variables from the shell running the tests."""
    names = set(variables(AuthEnvironment))
    for package in PACKAGES:
        names |= variables(settings_class(package)).keys()
    names |= {"REDIS_PASSWORD_FILE", "REDIS_USERNAME", "REDIS_TLS_CA_FILE"}
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)


@pytest.mark.parametrize("cls", [*map(settings_class, (*PACKAGES, "gateway")), AuthEnvironment])
def test_every_variable_is_documented(cls):
    assert issubclass(cls, BaseSettings)
    undocumented = [
        name for name, field in cls.model_fields.items() if not (field.description or "").strip()
    ]
    assert not undocumented, f"{cls.__module__}: fields without a description: {undocumented}"
    assert cls.__doc__ and cls.__module__.startswith("services.")


EXPECTED_DEFAULTS = {
    "decoder": {
        "redis_url": REDIS_URL,
        "model_server_addr": "127.0.0.1:8500",
        "host": "127.0.0.1",
        "port": 50052,
        "max_abs_latent": 100.0,
        "max_batch": 64,
        "max_steps": 32,
        "model_timeout": 30.0,
    },
    "encoder": {
        "redis_url": REDIS_URL,
        "model_server_addr": "127.0.0.1:8500",
        "models_dir": Path("models"),
        "host": "127.0.0.1",
        "port": 50051,
        "chunk_size": 64,
        "model_timeout": 30.0,
        "visibility_timeout": 300,
        "catalogue_roots": CatalogueRoots.of(DEFAULT_ROOTS),
        "job_ttl_seconds": 7 * 24 * 3600,
        "max_queued_chunks": 32,
        "max_job_entries": 1_000_000,
        "max_inline_image_bytes": 4 * 1024 * 1024,
        "max_chunk_deliveries": 3,
        "task_time_limit": 240,
        "task_soft_time_limit": 200,
        "job_resume_interval": 30.0,
        "requeue_after": 30.0,
    },
    "modelserver": {
        "models_dir": Path("models"),
        "host": "127.0.0.1",
        "port": 8500,
        "workers": 8,
        "max_batch": 1024,
    },
    "personalization": {
        "redis_url": REDIS_URL,
        "recommender_addr": "127.0.0.1:50054",
        "model_server_addr": "127.0.0.1:8500",
        "host": "127.0.0.1",
        "port": 50055,
        "call_timeout": 10.0,
        "model_timeout": 30.0,
        "catalogue_roots": CatalogueRoots.of(DEFAULT_ROOTS),
        "job_ttl_seconds": 7 * 24 * 3600,
        "import_batch_rows": 2000,
        "import_visibility_timeout": 300,
        "train_visibility_timeout": 3600 + 600,
        "train_time_limit": 3600,
        "max_job_deliveries": 3,
    },
    **{
        package: {
            "redis_url": REDIS_URL,
            "encoder_addr": "127.0.0.1:50051",
            "host": "127.0.0.1",
            "port": port,
            "kmeans_k": 16,
            "max_abs_latent": 100.0,
            "faiss_threads": 1,
            "shard_index": 0,
            "shard_count": 1,
            "shard": None,
            "index": IndexOptions(kind="flat", nprobe=64),
            "methods": RANKING_METHODS,
        }
        for package, port in (("retrieval", 50053), ("recommender", 50054))
    },
}


@pytest.mark.parametrize("package", PACKAGES)
def test_defaults_are_unchanged(package):
    settings = settings_class(package).from_env()
    assert {name: getattr(settings, name) for name in EXPECTED_DEFAULTS[package]} == (
        EXPECTED_DEFAULTS[package]
    )
    if package != "modelserver":
        assert settings.auth == AuthSettings("token", REDIS_URL, 5.0, None, None)


def test_an_empty_variable_means_its_default(monkeypatch):
    """As before: `DECODER_PORT=` (compose's `${VAR:-}`) is the default, not an error."""
    for name in ("DECODER_PORT", "MODEL_TIMEOUT_SECONDS", "ATELIER_AUTH", "ATELIER_TOKEN"):
        monkeypatch.setenv(name, "")
    settings = settings_class("decoder").from_env()
    assert (settings.port, settings.model_timeout, settings.auth.mode) == (50052, 30.0, "token")
    assert settings.auth.token is None


def test_values_are_read_and_the_settings_are_frozen(monkeypatch, tmp_path):
    monkeypatch.setenv("ENCODER_PORT", "6001")
    monkeypatch.setenv("ENCODE_CHUNK_SIZE", "8")
    monkeypatch.setenv("JOB_REQUEUE_AFTER_SECONDS", "2.5")
    monkeypatch.setenv("CATALOGUE_ROOTS", f"{tmp_path}:{tmp_path / 'b'}")
    monkeypatch.setenv("ATELIER_AUTH", " None ")
    monkeypatch.setenv("ATELIER_TOKEN_FILE", "/secrets/encoder.token")
    settings = settings_class("encoder").from_env()
    assert (settings.port, settings.requeue_after) == (6001, 2.5)
    assert settings.job_policy.chunk_size == 8
    assert settings.catalogue_roots.roots == (tmp_path.resolve(), (tmp_path / "b").resolve())
    assert (settings.auth.mode, settings.auth.token_file) == ("none", "/secrets/encoder.token")
    with pytest.raises(ValidationError):
        settings.port = 1
    monkeypatch.setenv("TRAIN_TIME_LIMIT_SECONDS", "100")
    assert settings_class("personalization").from_env().train_visibility_timeout == 700
    monkeypatch.setenv("TRAIN_VISIBILITY_TIMEOUT_SECONDS", "50")
    assert settings_class("personalization").from_env().train_visibility_timeout == 50


def test_redis_url_carries_the_password_file(monkeypatch, tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret))
    settings = settings_class("retrieval").from_env()
    assert settings.redis_url == settings.auth.redis_url == "redis://:s3cret@redis:6379/0"
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="REDIS_PASSWORD_FILE: cannot read"):
        settings_class("decoder").from_env()


@pytest.mark.parametrize(
    ("package", "environment", "message"),
    [
        (
            "decoder",
            {"DECODER_PORT": "abc"},
            "environment variable DECODER_PORT: Input should be a valid integer, unable to parse "
            "string as an integer, got 'abc'",
        ),
        ("decoder", {"MAX_ABS_LATENT": "-1"}, "environment variable MAX_ABS_LATENT: Input should"),
        ("decoder", {"REDIS_URL": ""}, "missing required environment variable REDIS_URL"),
        ("modelserver", {"MODEL_SERVER_PORT": "70000"}, "MODEL_SERVER_PORT: Input should be less"),
        ("modelserver", {"MODEL_SERVER_WORKERS": "0"}, "MODEL_SERVER_WORKERS: Input should be"),
        ("encoder", {"ENCODE_CHUNK_SIZE": "0"}, "environment variable ENCODE_CHUNK_SIZE: Input"),
        (
            "encoder",
            {"CATALOGUE_ROOTS": ":"},
            "environment variable CATALOGUE_ROOTS: at least one catalogue root is needed",
        ),
        (
            "encoder",
            {"ATELIER_AUTH": "maybe"},
            "environment variable ATELIER_AUTH: ATELIER_AUTH must be one of token, none, got",
        ),
        (
            "personalization",
            {"ATELIER_AUTH_CACHE_SECONDS": "soon"},
            "environment variable ATELIER_AUTH_CACHE_SECONDS: Input should be a valid number",
        ),
        (
            "personalization",
            {"TRAIN_TIME_LIMIT_SECONDS": "1h"},
            "environment variable TRAIN_TIME_LIMIT_SECONDS: Input should be a valid integer",
        ),
        (
            "retrieval",
            {"SHARD_INDEX": "3", "SHARD_COUNT": "3"},
            "environment variable SHARD_INDEX: must be in 0..SHARD_COUNT-1 = 0..2, got 3",
        ),
        (
            "recommender",
            {"SEARCH_METHODS": "nope"},
            "environment variable SEARCH_METHODS: unknown ranking methods ['nope']; choose from "
            + ", ".join(RANKING_METHODS),
        ),
    ],
)
def test_a_bad_value_exits_naming_the_variable(monkeypatch, package, environment, message):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        settings_class(package).from_env()
    assert message in str(stopped.value)


def test_every_bad_value_is_reported_at_once(monkeypatch):
    monkeypatch.setenv("DECODER_PORT", "abc")
    monkeypatch.setenv("MAX_TRAVERSE_STEPS", "0")
    with pytest.raises(SystemExit) as stopped:
        settings_class("decoder").from_env()
    assert "DECODER_PORT" in str(stopped.value) and "MAX_TRAVERSE_STEPS" in str(stopped.value)


def test_auth_settings_from_env_go_through_the_same_validation(monkeypatch):
    monkeypatch.setenv("ATELIER_AUTH", "none")
    monkeypatch.setenv("ATELIER_AUTH_CACHE_SECONDS", "0")
    monkeypatch.setenv("ATELIER_TOKEN", "t0ken")
    assert AuthSettings.from_env() == AuthSettings("none", REDIS_URL, 0.0, "t0ken", None)
    monkeypatch.setenv("ATELIER_AUTH_CACHE_SECONDS", "-1")
    with pytest.raises(SystemExit, match="ATELIER_AUTH_CACHE_SECONDS"):
        AuthSettings.from_env()
