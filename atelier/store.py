"""The Redis layout: codes per (item, model version), model versions, the served-generation pointer and jobs.

Keys (prefix `atelier:`):

    model:{v}                     hash   model version metadata (latent_dim, image size, ε packed, ...)
    models                        set    the registered model versions (no keyspace SCAN to list them)
    served                        string the served model version (the generation pointer)
    gen:{v}:items                 set    item ids encoded under version v
    gen:{v}:item:{id}             hash   mu, sigma, z (packed little-endian float32) + catalogue metadata
    gen:{v}:index                 hash   derived state for v, written once by the first replica that
                                         needs it: k-means centres, the category predictor
    job:{id}                      hash   job definition, the queued high-water mark, timestamps
    job:{id}:pending              list   the job's item ids in submission order; chunk i is a slice
    job:{id}:entry:{item}         hash   what to encode: image_ref or inline image, plus metadata;
                                         deleted once the item is recorded done or failed
    job:{id}:done                 set    item ids written (a set, so retries never double count)
    job:{id}:failed               hash   item id -> reason
    job:{id}:chunks               set    chunk indexes whose outcome is recorded
    job:{id}:deliveries           hash   "{chunk}:{attempt}" -> deliveries (the poison-chunk cap)
    job:{id}:pump                 string lock: one enqueueing pump per job at a time (expires)
    jobs:active                   set    job ids not finished yet (chunks to queue or to finish)

Every write is an idempotent upsert keyed by (item id, model version): re-running a task after a
crash rewrites the same keys with the same values. Job keys expire (the job's `ttl`, refreshed by
activity); codes belong to their generation and never expire.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

PREFIX = "atelier:"
GENERATION_CHANNEL = PREFIX + "generation"
ACTIVE_JOBS = PREFIX + "jobs:active"
MODELS = PREFIX + "models"
JOB_PARTS = ("pending", "done", "failed", "chunks", "deliveries")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
METADATA_FIELDS = (
    "article_type",
    "sub_category",
    "master_category",
    "gender",
    "usage",
    "season",
    "colour",
    "name",
    "image_ref",
)


def valid_job_id(job_id: str) -> bool:
    """Job ids are uuid4 hex (32 lowercase hex characters); nothing else becomes a Redis key."""
    return isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None


def job_key(job_id: str) -> str:
    if not valid_job_id(job_id):
        raise ValueError("a job id is 32 lowercase hex characters")
    return f"{PREFIX}job:{job_id}"


# One chunk's outcome. KEYS: the job, then JOB_PARTS in order, then the entry of every item
# recorded (done ones first). ARGV: now, chunk index or "", the number of done ids, the done ids,
# then (item id, reason) pairs of failures. Returns -1 for an unknown job, else items recorded.
_RECORD_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local now, chunk, ndone = ARGV[1], ARGV[2], tonumber(ARGV[3])
local entry = 7
for i = 1, ndone do
  redis.call('SADD', KEYS[3], ARGV[3 + i])
  redis.call('HDEL', KEYS[4], ARGV[3 + i])
  redis.call('DEL', KEYS[entry])
  entry = entry + 1
end
for i = 4 + ndone, #ARGV - 1, 2 do
  if redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 0 then
    redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1])
  end
  redis.call('DEL', KEYS[entry])
  entry = entry + 1
end
if chunk ~= '' then redis.call('SADD', KEYS[5], chunk) end
redis.call('HSETNX', KEYS[1], 'started', now)
redis.call('HSET', KEYS[1], 'updated', now)
local recorded = redis.call('SCARD', KEYS[3]) + redis.call('HLEN', KEYS[4])
if recorded >= tonumber(redis.call('HGET', KEYS[1], 'total')) then
  redis.call('HSETNX', KEYS[1], 'finished', now)
end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ttl) end
return recorded
"""
# A delivery of one chunk attempt. KEYS: the job, its deliveries. ARGV: "{chunk}:{attempt}", now.
_BEGIN_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSETNX', KEYS[1], 'started', ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(redis.call('HGET', KEYS[1], 'ttl')))
return n
"""
# The queued high-water mark only rises, so two enqueueing chains never skip a chunk.
_ADVANCE_QUEUED = """
local current = redis.call('HGET', KEYS[1], 'queued')
if not current then return -1 end
current = tonumber(current)
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('HSET', KEYS[1], 'queued', wanted)
  return wanted
end
return current
"""
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def pack(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def unpack(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    mu: np.ndarray
    sigma: np.ndarray
    z: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelRecord:
    version: int
    latent_dim: int
    image_height: int
    image_width: int
    data_hash: str
    epsilon: np.ndarray

    def to_hash(self) -> dict[str, str | bytes]:
        return {
            "version": str(self.version),
            "latent_dim": str(self.latent_dim),
            "image_height": str(self.image_height),
            "image_width": str(self.image_width),
            "data_hash": self.data_hash,
            "epsilon": pack(self.epsilon),
        }

    @classmethod
    def from_hash(cls, data: dict[bytes, bytes]) -> ModelRecord:
        return cls(
            version=int(data[b"version"]),
            latent_dim=int(data[b"latent_dim"]),
            image_height=int(data[b"image_height"]),
            image_width=int(data[b"image_width"]),
            data_hash=data[b"data_hash"].decode(),
            epsilon=unpack(data[b"epsilon"]).copy(),
        )


@dataclass(frozen=True)
class CodeMatrix:
    """All codes of one generation, row-aligned with item_ids."""

    version: int
    item_ids: list[str]
    mu: np.ndarray
    sigma: np.ndarray
    z: np.ndarray
    metadata: list[dict[str, str]]


class CodeStore:
    """Typed access to the Redis layout above. Holds no state besides the client and its scripts."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._record_chunk = client.register_script(_RECORD_CHUNK)
        self._begin_chunk = client.register_script(_BEGIN_CHUNK)
        self._advance_queued = client.register_script(_ADVANCE_QUEUED)
        self._set_if_exists = client.register_script(_SET_IF_EXISTS)

    @classmethod
    def from_url(cls, url: str) -> CodeStore:
        return cls(
            redis.Redis.from_url(
                url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
            )
        )

    # --- model versions and the generation pointer ---

    def register_model(self, record: ModelRecord) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(f"{PREFIX}model:{record.version}", mapping=record.to_hash())
        pipe.sadd(MODELS, record.version)
        pipe.execute()

    def model(self, version: int) -> ModelRecord | None:
        data = self.redis.hgetall(f"{PREFIX}model:{version}")
        return ModelRecord.from_hash(data) if data else None

    def model_versions(self) -> list[int]:
        """The registered model versions, from their set; a store written before the set
        existed is indexed once by a SCAN (a keyspace walk, so never again after that)."""
        if not self.redis.exists(MODELS):
            found = [
                int(k.rsplit(b":", 1)[1])
                for k in self.redis.scan_iter(match=f"{PREFIX}model:*", count=1000)
            ]
            if found:
                self.redis.sadd(MODELS, *found)
        return sorted(int(v) for v in self.redis.smembers(MODELS))

    def served_version(self) -> int | None:
        value = self.redis.get(f"{PREFIX}served")
        return int(value) if value is not None else None

    def serve(self, version: int) -> None:
        """Atomically point the services at a generation and announce it on the pub/sub channel."""
        if self.model(version) is None:
            raise KeyError(f"model version {version} is not registered")
        if self.item_count(version) == 0:
            raise ValueError(
                f"generation {version} holds no codes; encode a catalogue under it first"
            )
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{PREFIX}served", version)
        pipe.publish(GENERATION_CHANNEL, str(version))
        pipe.execute()

    def remove_generation(self, version: int) -> int:
        """Delete every code of a generation (never the served one, nor the one the served
        preference model ranks over). Returns the keys removed."""
        if self.served_version() == version:
            raise ValueError(f"version {version} is being served; serve another one first")
        # atelier/personal_store.py's keys (it imports this module, so not its constants).
        preference = self.redis.get(f"{PREFIX}pref:served")
        if (
            preference is not None
            and self.redis.hget(f"{PREFIX}pref:{int(preference)}", "model_version")
            == str(version).encode()
        ):
            raise ValueError(
                f"generation {version} holds the codes the served preference model "
                f"{int(preference)} ranks; serve or train another preference model first"
            )
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(f"{PREFIX}model:{version}")
        pipe.srem(MODELS, version)
        removed = int(pipe.execute()[0])
        for batch in _chunks(
            self.redis.scan_iter(match=f"{PREFIX}gen:{version}:*", count=1000), 500
        ):
            removed += int(self.redis.delete(*batch))
        return removed

    # --- codes ---

    def upsert_codes(self, version: int, records: Sequence[ItemRecord]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        self._queue_upserts(pipe, version, records)
        pipe.execute()

    def _queue_upserts(self, pipe, version: int, records: Sequence[ItemRecord]) -> None:
        for record in records:
            mapping: dict[str, bytes | str] = {
                "mu": pack(record.mu),
                "sigma": pack(record.sigma),
                "z": pack(record.z),
            }
            mapping.update({k: record.metadata.get(k, "") for k in METADATA_FIELDS})
            pipe.hset(self._item_key(version, record.item_id), mapping=mapping)
            pipe.sadd(f"{PREFIX}gen:{version}:items", record.item_id)

    def item(self, version: int, item_id: str) -> ItemRecord | None:
        data = self.redis.hgetall(self._item_key(version, item_id))
        return _record(item_id, data) if data else None

    def item_count(self, version: int) -> int:
        return int(self.redis.scard(f"{PREFIX}gen:{version}:items"))

    def item_ids(self, version: int) -> list[str]:
        return sorted(v.decode() for v in self.redis.smembers(f"{PREFIX}gen:{version}:items"))

    def load_codes(self, version: int, batch: int = 2000) -> CodeMatrix:
        """Every code of a generation, for building indexes at startup."""
        ids = self.item_ids(version)
        records: list[ItemRecord] = []
        for chunk in _chunks(ids, batch):
            pipe = self.redis.pipeline(transaction=False)
            for item_id in chunk:
                pipe.hgetall(self._item_key(version, item_id))
            for item_id, data in zip(chunk, pipe.execute(), strict=True):
                if data:
                    records.append(_record(item_id, data))
        model = self.model(version)
        dim = model.latent_dim if model else (len(records[0].mu) if records else 0)
        stack = (lambda name: np.stack([getattr(r, name) for r in records])) if records else None
        empty = np.zeros((0, dim), np.float32)
        return CodeMatrix(
            version=version,
            item_ids=[r.item_id for r in records],
            mu=stack("mu") if stack else empty,
            sigma=stack("sigma") if stack else empty,
            z=stack("z") if stack else empty,
            metadata=[r.metadata for r in records],
        )

    def partition_centres(self, version: int, space: str, k: int) -> np.ndarray | None:
        raw = self.redis.hget(f"{PREFIX}gen:{version}:index", f"kmeans:{space}:{k}")
        return unpack(raw).reshape(k, -1).copy() if raw else None

    def save_partition_centres(self, version: int, space: str, centres: np.ndarray) -> np.ndarray:
        """Store k-means centres once per generation; the first writer wins, so replicas agree."""
        k = len(centres)
        self.redis.hsetnx(f"{PREFIX}gen:{version}:index", f"kmeans:{space}:{k}", pack(centres))
        stored = self.partition_centres(version, space, k)
        assert stored is not None
        return stored

    def derived_state(self, version: int, name: str) -> bytes | None:
        """A piece of state derived from a generation (see `save_derived_state`)."""
        return self.redis.hget(f"{PREFIX}gen:{version}:index", name)

    def save_derived_state(self, version: int, name: str, value: bytes | str) -> bytes:
        """Keep derived state once per generation; the first writer wins, so replicas agree."""
        self.redis.hsetnx(f"{PREFIX}gen:{version}:index", name, value)
        stored = self.derived_state(version, name)
        assert stored is not None
        return stored

    def random_item_id(self, version: int) -> str | None:
        value = self.redis.srandmember(f"{PREFIX}gen:{version}:items")
        return value.decode() if value else None

    @staticmethod
    def _item_key(version: int, item_id: str) -> str:
        return f"{PREFIX}gen:{version}:item:{item_id}"

    # --- jobs ---

    def _job_keys(self, job_id: str) -> list[str]:
        key = job_key(job_id)
        return [key, *(f"{key}:{part}" for part in JOB_PARTS)]

    def _entry_key(self, job_id: str, item_id: str) -> str:
        return f"{job_key(job_id)}:entry:{item_id}"

    def create_job(
        self,
        version: int,
        entries: Sequence[dict[str, bytes | str]],
        chunk_size: int,
        ttl_seconds: int,
        image_size: tuple[int, int],
    ) -> str:
        """Store a job's entries (item_id, image_ref or image, metadata) and its definition.

        Every key expires after ttl_seconds (refreshed by activity). The definition is written
        last, in one transaction with the job's place among the active jobs: a job whose creator
        died half-way has no definition, and its entries simply expire.
        """
        job_id = uuid.uuid4().hex
        key = job_key(job_id)
        for chunk in _chunks(entries, 1000):
            pipe = self.redis.pipeline(transaction=False)
            for entry in chunk:
                entry_key = self._entry_key(job_id, str(entry["item_id"]))
                pipe.hset(entry_key, mapping=entry)
                pipe.expire(entry_key, ttl_seconds)
            pipe.rpush(f"{key}:pending", *[str(e["item_id"]) for e in chunk])
            pipe.expire(f"{key}:pending", ttl_seconds)
            pipe.execute()
        total = len(entries)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "model_version": str(version),
                "total": str(total),
                "chunk_size": str(chunk_size),
                "chunks": str(-(-total // chunk_size)),
                "queued": "0",
                "created": repr(time.time()),
                "cancelled": "0",
                "ttl": str(ttl_seconds),
                "image_height": str(image_size[0]),
                "image_width": str(image_size[1]),
            },
        )
        pipe.expire(key, ttl_seconds)
        pipe.sadd(ACTIVE_JOBS, job_id)
        pipe.execute()
        return job_id

    def job_exists(self, job_id: str) -> bool:
        return valid_job_id(job_id) and bool(self.redis.exists(job_key(job_id)))

    def job_entries(self, job_id: str, item_ids: Sequence[str]) -> list[dict[bytes, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hgetall(self._entry_key(job_id, item_id))
        return pipe.execute()

    def job_definition(self, job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(job_key(job_id)).items()}

    def chunk_item_ids(self, job_id: str, index: int, size: int) -> list[str]:
        """The item ids of chunk `index`: a slice of the job's pending list."""
        raw = self.redis.lrange(f"{job_key(job_id)}:pending", index * size, (index + 1) * size - 1)
        return [v.decode() for v in raw]

    def recorded_ids(self, job_id: str, item_ids: Sequence[str]) -> set[str]:
        """Those of item_ids already recorded as done or failed."""
        if not item_ids:
            return set()
        key = job_key(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.smismember(f"{key}:done", list(item_ids))
        pipe.hmget(f"{key}:failed", list(item_ids))
        done, failed = pipe.execute()
        return {
            item_id
            for item_id, is_done, reason in zip(item_ids, done, failed, strict=True)
            if is_done or reason is not None
        }

    def job_done_ids(self, job_id: str, item_ids: Sequence[str]) -> set[str]:
        """Those of item_ids recorded as done (encoded)."""
        if not item_ids:
            return set()
        flags = self.redis.smismember(f"{job_key(job_id)}:done", list(item_ids))
        return {item_id for item_id, flag in zip(item_ids, flags, strict=True) if flag}

    def begin_chunk(self, job_id: str, index: int, attempt: int) -> int:
        """Count one delivery of (chunk, attempt); 0 when the job is unknown or expired."""
        return int(
            self._begin_chunk(
                keys=[job_key(job_id), f"{job_key(job_id)}:deliveries"],
                args=[f"{index}:{attempt}", repr(time.time())],
            )
        )

    def record_chunk(
        self,
        job_id: str,
        version: int,
        records: Sequence[ItemRecord],
        failures: dict[str, str],
        chunk_index: int | None = None,
    ) -> bool:
        """Codes, outcomes and inline-bytes deletion of one chunk in one atomic step.

        An item is counted once, as done or failed: a success after a failure replaces it, a
        failure after a success is ignored, and the first failure's reason is kept. Inline image
        bytes of every item recorded are deleted in the same step. With chunk_index, the chunk is
        marked finished. Returns False when the job is unknown or expired (its codes are still
        written: they belong to the generation, not to the job).
        """
        done_ids = [r.item_id for r in records]
        entry_keys = [self._entry_key(job_id, i) for i in (*done_ids, *failures)]
        args: list[str] = [
            repr(time.time()),
            "" if chunk_index is None else str(chunk_index),
            str(len(done_ids)),
            *done_ids,
        ]
        for item_id, reason in failures.items():
            args += [item_id, reason]
        pipe = self.redis.pipeline(transaction=True)
        self._queue_upserts(pipe, version, records)
        self._record_chunk(keys=[*self._job_keys(job_id), *entry_keys], args=args, client=pipe)
        return int(pipe.execute()[-1]) >= 0

    def queue_state(self, job_id: str) -> QueueState | None:
        key = job_key(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hmget(key, "queued", "chunks", "chunk_size", "cancelled")
        pipe.scard(f"{key}:chunks")
        (queued, chunks, chunk_size, cancelled), finished = pipe.execute()
        if queued is None or chunks is None:
            return None
        return QueueState(
            int(queued), int(chunks), int(chunk_size), int(finished), cancelled == b"1"
        )

    def touch_chunk(self, job_id: str, index: int, size: int) -> None:
        """Refresh the TTL of a chunk's entries and of the job's keys (the chunk is being queued)."""
        ttl = self.redis.hget(job_key(job_id), "ttl")
        if ttl is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        for item_id in self.chunk_item_ids(job_id, index, size):
            pipe.expire(self._entry_key(job_id, item_id), int(ttl))
        for key in self._job_keys(job_id):
            pipe.expire(key, int(ttl))
        pipe.execute()

    def advance_queued(self, job_id: str, queued: int) -> int:
        """Raise the job's queued high-water mark to `queued` (never lower it); -1: no such job."""
        return int(self._advance_queued(keys=[job_key(job_id)], args=[str(queued)]))

    def set_job_fields(self, job_id: str, **fields: str) -> bool:
        """Set fields of an existing job's definition (never creates one)."""
        flat = [v for pair in fields.items() for v in pair]
        return bool(self._set_if_exists(keys=[job_key(job_id)], args=flat))

    def pump_lock(self, job_id: str, timeout: float):
        """The lock that lets one pump at a time queue a job's chunks (released or expired)."""
        return self.redis.lock(f"{job_key(job_id)}:pump", timeout=timeout)

    def active_jobs(self) -> list[str]:
        """Jobs that may still have chunks to queue or to finish."""
        return sorted(v.decode() for v in self.redis.smembers(ACTIVE_JOBS))

    def unfinished_chunks(self, job_id: str, below: int) -> list[int]:
        """The chunks under index `below` (the queued ones) not yet marked finished."""
        finished = {int(v) for v in self.redis.smembers(f"{job_key(job_id)}:chunks")}
        return [index for index in range(below) if index not in finished]

    def forget_active(self, job_id: str) -> None:
        self.redis.srem(ACTIVE_JOBS, job_id)

    def cancel_job(self, job_id: str) -> bool:
        cancelled = self.set_job_fields(job_id, cancelled="1", updated=repr(time.time()))
        self.forget_active(job_id)
        return cancelled

    def job_cancelled(self, job_id: str) -> bool:
        return self.redis.hget(job_key(job_id), "cancelled") == b"1"

    def job_progress(self, job_id: str, max_failures: int = 0) -> dict | None:
        key = job_key(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(key)
        pipe.scard(f"{key}:done")
        pipe.hlen(f"{key}:failed")
        pipe.scard(f"{key}:chunks")
        definition, done, failed, finished_chunks = pipe.execute()
        if not definition:
            return None
        fields = {k.decode(): v.decode() for k, v in definition.items()}
        failures: dict[str, str] = {}
        if max_failures > 0:
            for item_id, reason in self.redis.hscan_iter(f"{key}:failed", count=max_failures):
                failures[item_id.decode()] = reason.decode()
                if len(failures) >= max_failures:
                    break
        return {
            "job_id": job_id,
            **fields,
            "done": int(done),
            "failed": int(failed),
            "finished_chunks": int(finished_chunks),
            "failures": failures,
        }


@dataclass(frozen=True)
class QueueState:
    """Where a job's enqueueing stands: chunks handed to the queue, chunks finished."""

    queued: int
    chunks: int
    chunk_size: int
    finished: int
    cancelled: bool

    @property
    def in_flight(self) -> int:
        return self.queued - self.finished


def _record(item_id: str, data: dict[bytes, bytes]) -> ItemRecord:
    metadata = {k: data.get(k.encode(), b"").decode() for k in METADATA_FIELDS}
    if not metadata["sub_category"] and b"category" in data:
        # Written by the first version, whose only category field held the subCategory.
        metadata["sub_category"] = data[b"category"].decode()
    return ItemRecord(
        item_id=item_id,
        mu=unpack(data[b"mu"]),
        sigma=unpack(data[b"sigma"]),
        z=unpack(data[b"z"]),
        metadata=metadata,
    )


def _chunks(values: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for value in values:
        chunk.append(value)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
