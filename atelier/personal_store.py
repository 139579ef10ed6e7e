"""The Redis layout of personalisation: preference model versions, their served pointer, and jobs.

Keys (prefix `atelier:`), beside the code generations of atelier/store.py:

    pref:next                 counter  the last preference model version handed out
    pref:{v}                  hash     one trained model: kind, generation, counts, trained_at,
                                       model (VisualRanker bytes), popularity (float32 per item of
                                       `item_ids`), item_ids and top_users (JSON)
    pref:served               string   the served preference model version (switched atomically,
                                       announced on pub/sub "atelier:preference")
    pjob:{id}                 hash     an import or training job: definition, progress, outcome
    pjob:{id}:failed          hash     import: line -> reason of refused rows (capped)

A training job's model is written, its version allocated, the job marked done and (if asked) the
pointer switched by one script, which does nothing when the job already has its version: a
training task that runs twice (a redelivery after its worker died) makes one model version.
Job keys expire (the job's `ttl`); model versions stay until removed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
import redis

from atelier.store import pack, unpack, valid_job_id

PREFIX = "atelier:"
PREFERENCE_CHANNEL = PREFIX + "preference"
SERVED = PREFIX + "pref:served"
NEXT = PREFIX + "pref:next"
IMPORT, TRAIN = "import", "train"
INFO_FIELDS = ("kind", "model_version", "users", "items", "interactions", "trained_at")

# KEYS: the job, pref:next, pref:served. ARGV: now, serve ("1"/"0"), then the model's fields as
# name/value pairs. Returns the job's preference version (the existing one if it already has one).
# The model is served only if the served pointer is still what it was when the job was submitted
# (`served_at_submit`); otherwise it is kept unserved and the job says why.
_FINISH_TRAINING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local existing = redis.call('HGET', KEYS[1], 'preference_version')
if existing then return tonumber(existing) end
local version = redis.call('INCR', KEYS[2])
local key = 'atelier:pref:' .. version
for i = 3, #ARGV - 1, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'preference_version', version, 'finished', ARGV[1], 'updated', ARGV[1])
if ARGV[2] == '1' then
  local served = redis.call('GET', KEYS[3]) or ''
  local expected = redis.call('HGET', KEYS[1], 'served_at_submit') or served
  if served == expected then
    redis.call('SET', KEYS[3], version)
    redis.call('PUBLISH', 'atelier:preference', version)
  else
    redis.call('HSET', KEYS[1], 'not_served',
      'model ' .. served .. ' was served while this job ran; serve this one explicitly')
  end
end
return version
"""
# KEYS: the model's hash, pref:served. ARGV: the version. 0 when it does not exist, -1 when the
# generation of codes it was trained on is gone (it could never load).
_SERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local generation = redis.call('HGET', KEYS[1], 'model_version')
if redis.call('EXISTS', 'atelier:gen:' .. generation .. ':items') == 0 then return -1 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', 'atelier:preference', ARGV[1])
return 1
"""
# KEYS: the job. ARGV: the attempt. Deliveries of that attempt so far; 0 when the job is gone.
_DELIVERY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'deliveries:' .. ARGV[1], 1)
"""
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def pjob_key(job_id: str) -> str:
    if not valid_job_id(job_id):
        raise ValueError("a job id is 32 lowercase hex characters")
    return f"{PREFIX}pjob:{job_id}"


def pref_key(version: int) -> str:
    return f"{PREFIX}pref:{int(version)}"


@dataclass(frozen=True)
class PreferenceModel:
    """One trained preference model version, as stored."""

    version: int
    kind: str
    model_version: int  # the generation of codes it was trained on
    users: int
    items: int
    interactions: int
    trained_at: float
    model: bytes
    item_ids: list[str]
    popularity: np.ndarray  # per item of item_ids
    top_users: list[tuple[str, int]]  # (user id, interactions), most first


@dataclass(frozen=True)
class PreferenceInfo:
    version: int
    kind: str
    model_version: int
    users: int
    items: int
    interactions: int
    trained_at: float


class PreferenceStore:
    """Typed access to the layout above; holds no state besides the client and its scripts."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._finish = client.register_script(_FINISH_TRAINING)
        self._serve = client.register_script(_SERVE)
        self._set_if_exists = client.register_script(_SET_IF_EXISTS)
        self._delivery = client.register_script(_DELIVERY)

    # --- jobs ---

    def create_job(self, kind: str, fields: dict[str, str], ttl_seconds: int) -> str:
        job_id = uuid.uuid4().hex
        key = pjob_key(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "kind": kind,
                "created": repr(time.time()),
                "ttl": str(ttl_seconds),
                "rows": "0",
                "done": "0",
                "failed": "0",
                "duplicates": "0",
                **fields,
            },
        )
        pipe.expire(key, ttl_seconds)
        pipe.execute()
        return job_id

    def job(self, job_id: str) -> dict[str, str] | None:
        if not valid_job_id(job_id):
            return None
        raw = self.redis.hgetall(pjob_key(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    def job_failures(self, job_id: str, limit: int) -> list[tuple[int, str]]:
        if limit <= 0:
            return []
        found: list[tuple[int, str]] = []
        for line, reason in self.redis.hscan_iter(f"{pjob_key(job_id)}:failed", count=limit):
            found.append((int(line), reason.decode()))
            if len(found) >= limit:
                break
        return sorted(found)

    def set_job_fields(self, job_id: str, **fields: str) -> bool:
        """Set fields of an existing job (never creates one)."""
        flat = [v for pair in fields.items() for v in pair]
        return bool(self._set_if_exists(keys=[pjob_key(job_id)], args=flat))

    def count_delivery(self, job_id: str, attempt: int | str) -> int:
        """Count one delivery of a job's task attempt (a crash loop shows as many); 0: no job."""
        return int(self._delivery(keys=[pjob_key(job_id)], args=[str(attempt)]))

    # --- preference models ---

    def finish_training(self, job_id: str, model: PreferenceModel, serve: bool) -> int:
        """Store the job's model under a new version (once per job) and serve it if asked.

        Returns the version (the one stored before, if the job already finished); -1 when the
        job is gone.
        """
        fields: dict[str, str | bytes] = {
            "kind": model.kind,
            "model_version": str(model.model_version),
            "users": str(model.users),
            "items": str(model.items),
            "interactions": str(model.interactions),
            "trained_at": repr(model.trained_at),
            "model": model.model,
            "item_ids": json.dumps(model.item_ids),
            "popularity": pack(model.popularity),
            "top_users": json.dumps(model.top_users),
        }
        args: list[str | bytes] = [repr(time.time()), "1" if serve else "0"]
        for name, value in fields.items():
            args += [name, value]
        return int(self._finish(keys=[pjob_key(job_id), NEXT, SERVED], args=args))

    def model(self, version: int) -> PreferenceModel | None:
        raw = self.redis.hgetall(pref_key(version))
        if not raw:
            return None
        info = _info(version, raw)
        return PreferenceModel(
            version=version,
            kind=info.kind,
            model_version=info.model_version,
            users=info.users,
            items=info.items,
            interactions=info.interactions,
            trained_at=info.trained_at,
            model=raw[b"model"],
            item_ids=json.loads(raw[b"item_ids"]),
            popularity=unpack(raw[b"popularity"]).astype(np.float64),
            top_users=[(u, int(n)) for u, n in json.loads(raw[b"top_users"])],
        )

    def info(self, version: int) -> PreferenceInfo | None:
        values = self.redis.hmget(pref_key(version), *INFO_FIELDS)
        if values[0] is None:
            return None
        return _info(version, dict(zip((f.encode() for f in INFO_FIELDS), values, strict=True)))

    def versions(self) -> list[int]:
        found = []
        for key in self.redis.scan_iter(match=f"{PREFIX}pref:*", count=1000):
            suffix = key.decode().rsplit(":", 1)[1]
            if suffix.isdigit():
                found.append(int(suffix))
        return sorted(found)

    def served_version(self) -> int | None:
        value = self.redis.get(SERVED)
        return int(value) if value is not None else None

    def serve(self, version: int) -> None:
        """Atomically point the services at a preference model and announce it."""
        served = int(self._serve(keys=[pref_key(version), SERVED], args=[str(int(version))]))
        if served == 0:
            raise KeyError(f"preference model version {version} does not exist")
        if served < 0:
            raise ValueError(
                f"preference model {version} ranks a generation of codes that was removed; "
                "train a new one on the served generation"
            )


def _info(version: int, raw: dict[bytes, bytes]) -> PreferenceInfo:
    return PreferenceInfo(
        version=version,
        kind=raw[b"kind"].decode(),
        model_version=int(raw[b"model_version"]),
        users=int(raw[b"users"]),
        items=int(raw[b"items"]),
        interactions=int(raw[b"interactions"]),
        trained_at=float(raw[b"trained_at"]),
    )
