"""Bearer tokens and roles: who may call what. Domain only; the gRPC interceptor is in services/.

Keys (prefix `atelier:auth:`):

    token:{sha256}    hash   name, role, created (unix seconds) of one token
    names             hash   token name -> sha256 of its token

A token's plaintext is returned once by `TokenStore.create` and never stored: Redis holds only its
SHA-256. Tokens are 32 random bytes (`secrets.token_urlsafe(32)`), so a fast hash is enough: a slow
password hash (bcrypt, scrypt) protects low-entropy secrets against guessing, and 256 random bits
cannot be guessed whatever the hash costs.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from dataclasses import dataclass

import redis

PREFIX = "atelier:auth:"
NAMES_KEY = PREFIX + "names"


class Role(enum.IntEnum):
    """Each role may do everything the roles below it may."""

    READER = 1  # queries, decoding, encoding one photo, reading jobs and generations
    WRITER = 2  # plus submitting and cancelling catalogue jobs
    ADMIN = 3  # plus switching (and removing) the served generation

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown role {text!r}; choose from {choices}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class TokenRecord:
    name: str
    role: Role
    created: float


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"a token name is 1 to 64 letters, digits, '-', '_' or '.', got {name!r}")
    return name


class TokenStore:
    """Hashed tokens in Redis: create (shown once), list, revoke, look up."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    @classmethod
    def from_url(cls, url: str) -> TokenStore:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))

    def create(self, name: str, role: Role) -> str:
        """A new token named `name` with `role`; returns its plaintext, which is not kept."""
        token = secrets.token_urlsafe(32)
        self.register(name, role, token)
        return token

    def register(self, name: str, role: Role, token: str) -> None:
        """Store the hash of an existing plaintext token (init-secrets re-registers its files)."""
        check_name(name)
        digest = token_digest(token)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(NAMES_KEY)
                if pipe.hexists(NAMES_KEY, name):
                    raise ValueError(f"a token named {name!r} exists; revoke it first")
                pipe.multi()
                pipe.hset(NAMES_KEY, name, digest)
                pipe.hset(
                    PREFIX + f"token:{digest}",
                    mapping={"name": name, "role": role.label, "created": f"{time.time():.3f}"},
                )
                pipe.execute()
            except redis.WatchError:
                raise ValueError(f"a token named {name!r} was created meanwhile") from None

    def lookup(self, token: str) -> TokenRecord | None:
        """The record of a live token; None for an unknown or revoked one."""
        return self._record(token_digest(token))

    def _record(self, digest: str) -> TokenRecord | None:
        data = self.redis.hgetall(PREFIX + f"token:{digest}")
        if not data:
            return None
        return TokenRecord(
            name=data[b"name"].decode(),
            role=Role.parse(data[b"role"].decode()),
            created=float(data[b"created"]),
        )

    def get(self, name: str) -> TokenRecord | None:
        digest = self.redis.hget(NAMES_KEY, name)
        return self._record(digest.decode()) if digest else None

    def matches(self, name: str, token: str) -> bool:
        """Whether `token` is the live token named `name`."""
        digest = self.redis.hget(NAMES_KEY, name)
        return digest is not None and secrets.compare_digest(digest.decode(), token_digest(token))

    def list(self) -> list[TokenRecord]:
        records = []
        for digest in self.redis.hgetall(NAMES_KEY).values():
            record = self._record(digest.decode())
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.name)

    def revoke(self, name: str) -> bool:
        """Delete the token named `name`; False if there was none."""
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(NAMES_KEY)
                    digest = pipe.hget(NAMES_KEY, name)
                    if digest is None:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hdel(NAMES_KEY, name)
                    pipe.delete(PREFIX + f"token:{digest.decode()}")
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
