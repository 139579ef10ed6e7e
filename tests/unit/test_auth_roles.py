"""The role table covers every RPC, and the pieces of the token check that need no server."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import atelier.v1
from atelier.auth import Role, check_name, token_digest
from services.common.auth import (
    METHOD_ROLES,
    OPEN_SERVICES,
    AuthSettings,
    bearer_token,
    is_loopback,
)


def _every_method() -> set[str]:
    methods = set()
    for module in pkgutil.iter_modules(atelier.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"atelier.v1.{module.name}").DESCRIPTOR
            for service in descriptor.services_by_name.values():
                methods |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return methods


def test_every_rpc_of_every_service_has_a_role():
    methods = _every_method()
    assert len(methods) >= 13
    assert methods - set(METHOD_ROLES) == set(), "RPCs without a role in METHOD_ROLES"
    assert set(METHOD_ROLES) - methods == set(), "roles for RPCs that do not exist"


def test_roles_follow_the_issue():
    writer = {
        "SubmitCatalogue",
        "CancelJob",
        "UpsertItems",
        "DeleteItems",
        "RecordInteractions",
        "ImportInteractions",
    }
    admin = {"ServeGeneration", "RemoveGeneration", "TrainPreferenceModel", "ServePreferenceModel"}
    for method, role in METHOD_ROLES.items():
        name = method.rsplit("/", 1)[1]
        expected = Role.ADMIN if name in admin else Role.WRITER if name in writer else Role.READER
        assert role == expected, method
    assert Role.READER < Role.WRITER < Role.ADMIN
    assert not any(method.split("/")[1] in OPEN_SERVICES for method in METHOD_ROLES)


def test_role_names_parse_and_reject_typos():
    assert Role.parse("Writer") is Role.WRITER
    with pytest.raises(ValueError, match="choose from reader, writer, admin"):
        Role.parse("root")


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer abc")], "abc"),
        ([("Authorization", "bearer  abc ")], "abc"),
        ([("x-other", "1"), ("authorization", b"Bearer abc")], "abc"),
        ([("authorization", "Basic abc")], None),
        ([("authorization", "Bearer ")], None),
        ([], None),
        (None, None),
    ],
)
def test_bearer_token_from_metadata(metadata, token):
    assert bearer_token(metadata) == token


def test_token_names_and_digests():
    assert check_name("svc-retrieval_1.a") == "svc-retrieval_1.a"
    for bad in ("", "a b", "x" * 65, "a/b"):
        with pytest.raises(ValueError):
            check_name(bad)
    assert token_digest("abc") != token_digest("abd") and len(token_digest("abc")) == 64


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("encoder", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_no_authentication_only_on_loopback(monkeypatch, caplog):
    monkeypatch.setenv("ATELIER_AUTH", "none")
    settings = AuthSettings.from_env()
    with pytest.raises(SystemExit, match="loopback only"):
        settings.check_bind("0.0.0.0", "the encoder")
    settings.check_bind("127.0.0.1", "the encoder")
    assert "AUTHENTICATION IS OFF" in caplog.text
    monkeypatch.setenv("ATELIER_AUTH", "maybe")
    with pytest.raises(SystemExit, match="ATELIER_AUTH must be one of"):
        AuthSettings.from_env()


def test_token_mode_needs_the_token_store(monkeypatch):
    monkeypatch.setenv("ATELIER_AUTH", "token")
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(SystemExit, match="needs REDIS_URL"):
        AuthSettings.from_env().check_bind("0.0.0.0", "the encoder")


def test_the_token_store_url_carries_the_redis_password_file(monkeypatch, tmp_path):
    """Tokens live in the same password-protected Redis as everything else (REDIS_PASSWORD_FILE)."""
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("ATELIER_AUTH", "token")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret))
    assert AuthSettings.from_env().redis_url == "redis://:s3cret@redis:6379/0"


def test_the_redis_password_file_is_made_once(tmp_path):
    from services.common.secrets import ensure_redis_password

    path = tmp_path / "secrets" / "redis-password"
    assert ensure_redis_password(path) == "created"
    password = path.read_text().strip()
    assert len(password) == 64 and int(password, 16) >= 0
    assert path.stat().st_mode & 0o777 == 0o400
    assert ensure_redis_password(path) == "kept"
    assert path.read_text().strip() == password
