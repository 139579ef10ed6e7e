"""The Redis layout: codes per (item, model version), model versions, the served-generation pointer and jobs.

Keys (prefix `atelier:`):

    model:{v}                     hash   model version metadata (latent_dim, image size, ε packed, ...)
    served                        string the served model version (the generation pointer)
    gen:{v}:items                 set    item ids encoded under version v
    gen:{v}:item:{id}             hash   mu, sigma, z (packed little-endian float32) + catalogue metadata
    gen:{v}:index                 hash   derived state for v, written once by the first replica that
                                         needs it: k-means centres, the category predictor
    job:{id}                      hash   job definition and timestamps
    job:{id}:pending              list   the job's item ids in submission order (what gets queued)
    job:{id}:entry:{item}         hash   what to encode: image_ref or inline image, plus metadata
    job:{id}:done                 set    item ids written (a set, so retries never double count)
    job:{id}:failed               hash   item id -> reason

Every write is an idempotent upsert keyed by (item id, model version): re-running a task after a
crash rewrites the same keys with the same values.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

PREFIX = "atelier:"
GENERATION_CHANNEL = PREFIX + "generation"
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
    """Typed access to the Redis layout above. Holds no state besides the client."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    @classmethod
    def from_url(cls, url: str) -> CodeStore:
        return cls(
            redis.Redis.from_url(
                url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
            )
        )

    # --- model versions and the generation pointer ---

    def register_model(self, record: ModelRecord) -> None:
        self.redis.hset(f"{PREFIX}model:{record.version}", mapping=record.to_hash())

    def model(self, version: int) -> ModelRecord | None:
        data = self.redis.hgetall(f"{PREFIX}model:{version}")
        return ModelRecord.from_hash(data) if data else None

    def model_versions(self) -> list[int]:
        return sorted(
            int(k.rsplit(b":", 1)[1])
            for k in self.redis.scan_iter(match=f"{PREFIX}model:*", count=1000)
        )

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
        """Delete every code of a generation (never the served one). Returns the keys removed."""
        if self.served_version() == version:
            raise ValueError(f"version {version} is being served; serve another one first")
        removed = int(self.redis.delete(f"{PREFIX}model:{version}"))
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

    def create_job(self, version: int, entries: Sequence[dict[str, bytes | str]]) -> str:
        """Store a job's entries (each with item_id, image_ref or image, and metadata) and queue ids."""
        job_id = uuid.uuid4().hex
        key = f"{PREFIX}job:{job_id}"
        for chunk in _chunks(entries, 1000):
            pipe = self.redis.pipeline(transaction=False)
            for entry in chunk:
                pipe.hset(f"{key}:entry:{entry['item_id']}", mapping=entry)
            pipe.rpush(f"{key}:pending", *[str(e["item_id"]) for e in chunk])
            pipe.execute()
        self.redis.hset(
            key,
            mapping={
                "model_version": str(version),
                "total": str(len({str(e["item_id"]) for e in entries})),
                "created": repr(time.time()),
                "cancelled": "0",
            },
        )
        return job_id

    def job_exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(f"{PREFIX}job:{job_id}"))

    def job_entries(self, job_id: str, item_ids: Sequence[str]) -> list[dict[bytes, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hgetall(f"{PREFIX}job:{job_id}:entry:{item_id}")
        return pipe.execute()

    def job_definition(self, job_id: str) -> dict[str, str]:
        return {
            k.decode(): v.decode() for k, v in self.redis.hgetall(f"{PREFIX}job:{job_id}").items()
        }

    def pending_chunks(self, job_id: str, size: int) -> Iterator[list[str]]:
        ids = [v.decode() for v in self.redis.lrange(f"{PREFIX}job:{job_id}:pending", 0, -1)]
        yield from _chunks(ids, size)

    def record_progress(
        self, job_id: str, version: int, records: Sequence[ItemRecord], failures: dict[str, str]
    ) -> None:
        """Codes, done marks and failures of one task in one transaction: all or nothing."""
        pipe = self.redis.pipeline(transaction=True)
        key = f"{PREFIX}job:{job_id}"
        self._queue_upserts(pipe, version, records)
        if records:
            written = [r.item_id for r in records]
            pipe.sadd(f"{key}:done", *written)
            pipe.hdel(f"{key}:failed", *written)  # a redelivered chunk succeeded after all
        if failures:
            pipe.hset(f"{key}:failed", mapping=failures)
        pipe.hsetnx(key, "started", repr(time.time()))
        pipe.hset(key, "updated", repr(time.time()))
        pipe.execute()

    def job_done_ids(self, job_id: str, item_ids: Sequence[str]) -> set[str]:
        if not item_ids:
            return set()
        flags = self.redis.smismember(f"{PREFIX}job:{job_id}:done", list(item_ids))
        return {item_id for item_id, flag in zip(item_ids, flags, strict=True) if flag}

    def cancel_job(self, job_id: str) -> None:
        self.redis.hset(f"{PREFIX}job:{job_id}", "cancelled", "1")

    def job_cancelled(self, job_id: str) -> bool:
        return self.redis.hget(f"{PREFIX}job:{job_id}", "cancelled") == b"1"

    def job_progress(self, job_id: str, max_failures: int = 0) -> dict | None:
        key = f"{PREFIX}job:{job_id}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(key)
        pipe.scard(f"{key}:done")
        pipe.hlen(f"{key}:failed")
        definition, done, failed = pipe.execute()
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
            "failures": failures,
        }


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
