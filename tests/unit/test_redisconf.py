"""The Redis URL with its secrets: password file, ACL user, TLS files; Celery's share of it."""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from services.common.redisconf import celery_broker, redacted, with_secrets


def test_password_file_fills_in_a_url_without_one(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("p@ss:w/rd%?\n")  # characters a URL must quote
    url = with_secrets("redis://redis:6379/0", {"REDIS_PASSWORD_FILE": str(secret)})
    kwargs = redis.connection.parse_url(url)
    assert kwargs["password"] == "p@ss:w/rd%?" and kwargs["host"] == "redis"
    assert kwargs["port"] == 6379 and kwargs["db"] == 0 and "username" not in kwargs
    assert "p@ss" not in redacted(url) and redacted(url) == "redis://:***@redis:6379/0"


def test_acl_user_and_a_url_that_has_its_password_already(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-file")
    env = {"REDIS_PASSWORD_FILE": str(secret), "REDIS_USERNAME": "atelier"}
    kwargs = redis.connection.parse_url(with_secrets("redis://redis:6379/0", env))
    assert (kwargs["username"], kwargs["password"]) == ("atelier", "from-file")
    # A URL that names its own password keeps it.
    assert with_secrets("redis://u:own@redis:6379/0", env) == "redis://u:own@redis:6379/0"
    assert with_secrets("redis://redis:6379/0", {}) == "redis://redis:6379/0"


def test_empty_or_missing_password_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match="is empty"):
        with_secrets("redis://redis:6379/0", {"REDIS_PASSWORD_FILE": str(empty)})
    with pytest.raises(SystemExit, match="cannot read"):
        with_secrets("redis://redis:6379/0", {"REDIS_PASSWORD_FILE": str(tmp_path / "none")})


def test_tls_files_become_ssl_options_of_a_rediss_url():
    env = {
        "REDIS_TLS_CA_FILE": "/certs/ca.pem",
        "REDIS_TLS_CERT_FILE": "/certs/client.pem",
        "REDIS_TLS_KEY_FILE": "/certs/client-key.pem",
    }
    url = with_secrets("rediss://:pw@redis:6379/0", env)
    query = parse_qs(urlsplit(url).query)
    assert query["ssl_ca_certs"] == ["/certs/ca.pem"] and query["ssl_cert_reqs"] == ["required"]
    kwargs = redis.connection.parse_url(url)
    assert kwargs["connection_class"] is redis.SSLConnection
    assert kwargs["ssl_certfile"] == "/certs/client.pem"
    broker, options = celery_broker(url)
    assert broker == "rediss://:pw@redis:6379/0"
    assert options == {
        "ssl_ca_certs": "/certs/ca.pem",
        "ssl_certfile": "/certs/client.pem",
        "ssl_keyfile": "/certs/client-key.pem",
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    assert celery_broker("redis://redis:6379/0") == ("redis://redis:6379/0", None)
    with pytest.raises(SystemExit, match="not rediss://"):
        with_secrets("redis://redis:6379/0", env)
