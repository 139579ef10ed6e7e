"""The suite's own secrets as files: what compose's one-shot `init-secrets` service runs.

`atelier tokens init-secrets --dir /secrets --redis-password-file /secrets/redis-password` first
makes sure the Redis password file exists (64 hex characters, mode 0400, generated once: Redis
starts with it as its requirepass), then keeps one token per name in `<dir>/<name>.token` (mode
0400) and its hash in Redis. Re-running rotates nothing: the password file is kept; a token file
whose token Redis still knows is kept; one Redis forgot (a wiped Redis) is registered again; a
missing file gets a new token, and the old token of that name is revoked.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from atelier.auth import Role, TokenStore

# name -> role. The bootstrap encodes and serves the first generation (admin); retrieval and
# recommender call the encoder for queries by photo, personalization calls the recommender
# (reader). The gateway passes each caller's own token on, so it needs none of its own.
DEFAULT_SECRETS = {
    "admin": "admin",
    "retrieval": "reader",
    "recommender": "reader",
    "personalization": "reader",
}


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_redis_password(path: Path) -> str:
    """Make `path` hold a Redis password (generated once, 0400); returns "kept" or "created"."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if _read(path) is not None:
        return "kept"
    _write_private(path, secrets.token_hex(32))
    return "created"


def init_secrets(store: TokenStore, directory: Path, wanted: dict[str, str]) -> dict[str, str]:
    """Make `<directory>/<name>.token` hold a live token of each wanted role; returns what was
    done per name ("kept", "registered again", "role changed", "created")."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    outcomes: dict[str, str] = {}
    for name, role_text in wanted.items():
        role = Role.parse(role_text)
        path = directory / f"{name}.token"
        token = _read(path)
        if token is not None:
            record = store.get(name)
            same_token = record is not None and store.matches(name, token)
            if same_token and record.role == role:
                outcomes[name] = "kept"
                continue
            outcome = "role changed" if same_token else "registered again"
            store.revoke(name)
            store.register(name, role, token)
            outcomes[name] = outcome
            continue
        store.revoke(name)  # its file is gone, so nobody can use the old token any more
        token = secrets.token_urlsafe(32)
        _write_private(path, token)
        store.register(name, role, token)
        outcomes[name] = "created"
    return outcomes
