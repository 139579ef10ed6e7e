"""The Redis URL every process uses, with its password (or ACL user) and TLS files from the environment.

`REDIS_URL` may carry everything itself (`rediss://user:password@host:6380/0?ssl_ca_certs=...`).
For compose's generated secret, `REDIS_PASSWORD_FILE` (and `REDIS_USERNAME` for an ACL user) fill
in what the URL lacks; for `rediss://`, `REDIS_TLS_CA_FILE` (and `REDIS_TLS_CERT_FILE` /
`REDIS_TLS_KEY_FILE` where the server asks for client certificates) become redis-py's `ssl_*`
URL options. redis-py reads those from the URL (so `CodeStore.from_url` needs nothing else);
Celery's broker takes them as `broker_use_ssl` (`celery_broker`).

The resolved URL holds the password: log `redacted(url)`, never the URL.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import redis

SSL_OPTIONS = {
    "REDIS_TLS_CA_FILE": "ssl_ca_certs",
    "REDIS_TLS_CERT_FILE": "ssl_certfile",
    "REDIS_TLS_KEY_FILE": "ssl_keyfile",
}
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


# Redis errors that mean "not now" rather than "wrong request": down, still loading its data, or
# a replica that turned read-only in a failover. Services answer UNAVAILABLE on them.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
)


def with_secrets(url: str, env: Mapping[str, str] | None = None) -> str:
    """`url` with the password file's password, the ACL user and the TLS files it lacks."""
    env = os.environ if env is None else env
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return url
    netloc = parts.netloc
    password_file = env.get("REDIS_PASSWORD_FILE") or ""
    if password_file and parts.password is None:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(
                f"REDIS_PASSWORD_FILE: cannot read {password_file}: {exc.strerror}"
            ) from None
        if not password:
            raise SystemExit(f"REDIS_PASSWORD_FILE: {password_file} is empty")
        user = parts.username or env.get("REDIS_USERNAME") or ""
        host = netloc.rpartition("@")[2]
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "rediss":
        for variable, option in SSL_OPTIONS.items():
            if env.get(variable) and option not in query:
                query[option] = env[variable]
        if "ssl_ca_certs" in query:
            query.setdefault("ssl_cert_reqs", "required")
    elif any(env.get(variable) for variable in SSL_OPTIONS):
        raise SystemExit("REDIS_TLS_* files are set but REDIS_URL is not rediss://")
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


def redis_url_from_env(default: str | None = None) -> str:
    """REDIS_URL (required unless a default is given) with the secrets above filled in.
    The services read it as a settings field (services.common.settings.RedisUrl)."""
    url = os.environ.get("REDIS_URL") or default
    if not url:
        raise SystemExit("missing required environment variable REDIS_URL")
    return with_secrets(url)


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))


def celery_broker(url: str) -> tuple[str, dict | None]:
    """The broker URL without its `ssl_*` options, and those options as `broker_use_ssl`
    (kombu ignores TLS options in a redis URL's query)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url, None
    query = dict(parse_qsl(parts.query))
    options = {key: query.pop(key) for key in list(query) if key.startswith("ssl_")}
    options["ssl_cert_reqs"] = CERT_REQS[str(options.get("ssl_cert_reqs", "required")).lower()]
    if "ssl_check_hostname" in options:
        options["ssl_check_hostname"] = options["ssl_check_hostname"].lower() in (
            "1",
            "true",
            "yes",
        )
    return urlunsplit(parts._replace(query=urlencode(query))), options
