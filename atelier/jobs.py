"""Batch encoding jobs as plain functions: submit a catalogue, encode one chunk of ids, report progress.

The Celery task and the gRPC servicer only call these. A chunk is idempotent: codes are upserts
keyed by (item id, model version) and progress marks are set members, so a chunk that runs twice
(a retry, or a redelivery after a worker was killed) changes nothing the second time.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atelier.catalogue import ImageError, decode_image, load_image_file, read_catalogue_csv
from atelier.store import METADATA_FIELDS, CodeStore, ItemRecord

log = logging.getLogger(__name__)

EncodeFn = Callable[[np.ndarray, int], dict[str, np.ndarray]]
DEFAULT_CHUNK = 64


class ChunkRejected(Exception):
    """The model refused the whole batch for a reason retrying will not fix."""


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobProgress:
    job_id: str
    model_version: int
    state: JobState
    total: int
    done: int
    failed: int
    items_per_second: float
    eta_seconds: float
    created: float
    finished: float
    failures: dict[str, str] = field(default_factory=dict)


def entries_from_csv(csv_path: Path, image_dir: Path | None = None) -> list[dict[str, str]]:
    """Job entries (item id, image path and metadata) from a catalogue CSV."""
    return [
        {"item_id": item.item_id, "image_ref": str(item.image_path), **item.metadata()}
        for item in read_catalogue_csv(csv_path, image_dir)
    ]


def submit(
    store: CodeStore,
    version: int,
    entries: Sequence[dict],
    enqueue: Callable[[str, list[str]], None],
    chunk_size: int = DEFAULT_CHUNK,
) -> str:
    """Record the job, then hand its ids to the queue in chunks. Tasks carry ids, never arrays."""
    if not entries:
        raise ValueError("a job needs at least one item")
    seen: set[str] = set()
    for entry in entries:
        item_id = str(entry.get("item_id", "")).strip()
        if not item_id:
            raise ValueError("every item needs a non-empty item_id")
        if item_id in seen:
            raise ValueError(f"item_id {item_id!r} appears twice in the job")
        seen.add(item_id)
    job_id = store.create_job(version, entries)
    for chunk in store.pending_chunks(job_id, chunk_size):
        enqueue(job_id, chunk)
    return job_id


def _load(entry: dict[bytes, bytes], size: tuple[int, int]) -> np.ndarray:
    inline = entry.get(b"image")
    if inline is not None:
        return decode_image(inline, size)
    reference = entry.get(b"image_ref", b"").decode()
    if not reference:
        raise ImageError("no image and no image_ref")
    return load_image_file(Path(reference), size)


def encode_chunk(
    store: CodeStore,
    encode: EncodeFn,
    job_id: str,
    item_ids: Sequence[str],
    image_size: tuple[int, int],
) -> tuple[int, int]:
    """Encode one chunk of a job's items. Bad images are recorded by id and reason, never raised.

    Returns (written, failed). Raises only for transient trouble (model server, Redis), which the
    caller retries; nothing is written for the chunk in that case.
    """
    definition = store.job_definition(job_id)
    if not definition:
        raise LookupError(f"unknown job {job_id}")
    if store.job_cancelled(job_id):
        return 0, 0
    version = int(definition["model_version"])
    entries = store.job_entries(job_id, item_ids)
    images, kept, failures = [], [], {}
    for item_id, entry in zip(item_ids, entries, strict=True):
        if not entry:
            failures[item_id] = "job entry missing"
            continue
        try:
            images.append(_load(entry, image_size))
            kept.append((item_id, entry))
        except ImageError as exc:
            failures[item_id] = str(exc)
    records = []
    if images:
        try:
            codes = encode(np.stack(images), version)
        except ChunkRejected as exc:
            failures.update({item_id: str(exc) for item_id, _ in kept})
            kept = []
        for row, (item_id, entry) in enumerate(kept):
            metadata = {
                k.decode(): v.decode() for k, v in entry.items() if k not in (b"image", b"item_id")
            }
            if b"image" in entry and not metadata.get("image_ref"):
                metadata["image_ref"] = "inline"
            records.append(
                ItemRecord(
                    item_id, codes["mu"][row], codes["sigma"][row], codes["z"][row], metadata
                )
            )
    store.record_progress(job_id, version, records, failures)
    return len(records), len(failures)


def fail_chunk(store: CodeStore, job_id: str, item_ids: Sequence[str], reason: str) -> None:
    """Record every item of a chunk that this job has not written as failed (the queue gave up on it)."""
    definition = store.job_definition(job_id)
    if definition:
        written = store.job_done_ids(job_id, item_ids)
        failures = {i: reason for i in item_ids if i not in written}
        store.record_progress(job_id, int(definition["model_version"]), [], failures)


def progress(
    store: CodeStore, job_id: str, max_failures: int = 0, now: float | None = None
) -> JobProgress | None:
    """Progress derived from the job's sets: nothing is counted twice, whatever ran twice."""
    raw = store.job_progress(job_id, max_failures)
    if raw is None:
        return None
    now = time.time() if now is None else now
    total, done, failed = int(raw["total"]), raw["done"], raw["failed"]
    finished_count = done + failed
    created = float(raw["created"])
    started = float(raw.get("started", created))
    updated = float(raw.get("updated", now))
    if raw.get("cancelled") == "1":
        state = JobState.CANCELLED
    elif finished_count >= total:
        state = JobState.SUCCEEDED
    elif finished_count:
        state = JobState.RUNNING
    else:
        state = JobState.QUEUED
    end = updated if state in (JobState.SUCCEEDED, JobState.CANCELLED) else now
    elapsed = max(end - started, 1e-6)
    rate = finished_count / elapsed if finished_count else 0.0
    eta = (total - finished_count) / rate if rate and state is JobState.RUNNING else 0.0
    return JobProgress(
        job_id=job_id,
        model_version=int(raw["model_version"]),
        state=state,
        total=total,
        done=done,
        failed=failed,
        items_per_second=rate,
        eta_seconds=eta,
        created=created,
        finished=updated if state is JobState.SUCCEEDED else 0.0,
        failures=raw["failures"],
    )


class QueueUnavailable(Exception):
    """The queue refused new work; the job's unqueued items are recorded as failed."""


def submit_or_fail(
    store: CodeStore,
    version: int,
    entries: Sequence[dict],
    enqueue: Callable[[str, list[str]], None],
    chunk_size: int = DEFAULT_CHUNK,
) -> str:
    """Like submit, but a queue failure part-way never leaves a job that cannot finish."""
    queued: list[str] = []
    job_id_holder: list[str] = []

    def tracked(job_id: str, item_ids: list[str]) -> None:
        job_id_holder[:] = [job_id]
        enqueue(job_id, item_ids)
        queued.extend(item_ids)

    try:
        return submit(store, version, entries, tracked, chunk_size)
    except ValueError:
        raise
    except Exception as exc:
        if job_id_holder:
            job_id = job_id_holder[0]
            done = set(queued)
            reason = f"not queued: {exc}"
            store.record_progress(
                job_id,
                version,
                [],
                {str(e["item_id"]): reason for e in entries if str(e["item_id"]) not in done},
            )
        raise QueueUnavailable(str(exc)) from exc


def normalise_entry(item_id: str, metadata: dict[str, str], image_ref: str, image: bytes) -> dict:
    """One job entry from a request's fields: the store's metadata fields, the image or its ref."""
    entry: dict = {"item_id": item_id, "image_ref": image_ref}
    entry.update({k: metadata.get(k, "") for k in METADATA_FIELDS if k != "image_ref"})
    if image:
        entry["image"] = image
    return entry


def ensure_model_registered(
    store: CodeStore,
    version: int,
    image_size: tuple[int, int],
    latent_dim: int,
    models_dir: Path,
    encode: EncodeFn,
) -> None:
    """Record a model version (with its fixed ε) in Redis before its first generation is written.

    ε comes from the version's atelier_model.json when the models are on this machine; behind a
    remote TensorFlow Serving it is recovered from one probe encoding, ε = (z − μ) / σ.
    """
    from atelier.modelstore import read_metadata
    from atelier.store import ModelRecord

    if store.model(version) is not None:
        return
    try:
        metadata = read_metadata(models_dir, version)
        epsilon, data_hash = metadata.epsilon, metadata.data_hash
    except FileNotFoundError:
        codes = encode(np.full((1, *image_size, 3), 0.5, np.float32), version)
        epsilon, data_hash = ((codes["z"] - codes["mu"]) / codes["sigma"])[0], ""
    store.register_model(
        ModelRecord(version, latent_dim, image_size[0], image_size[1], data_hash, epsilon)
    )
