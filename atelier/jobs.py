"""Batch encoding jobs as plain functions: submit a catalogue, queue its chunks, encode one chunk,
report progress.

The Celery task and the gRPC servicer only call these. A chunk is idempotent: codes are upserts
keyed by (item id, model version) and each item's outcome is recorded once, atomically (done or
failed, never both), so a chunk that runs twice (a retry, or a redelivery after a worker was
killed) changes nothing the second time.

Chunks are queued through a window: at most `max_queued_chunks` of a job are in the queue at
once, and each finished chunk tops the window up. The job records how far queueing got (a
high-water mark that only rises), so an encoder that dies part-way leaves a job that the next
scan (`resume`), or the next GetJob, carries on. A job stays among the active ones until every
chunk is finished, so that chunks the queue lost (a Redis crash) are queued again
(`requeue_lost`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from redis.exceptions import LockError

from atelier.catalogue import ImageError, decode_image, iter_catalogue_csv, load_image_file
from atelier.confinement import CatalogueRoots, PathNotAllowed, shown
from atelier.latent import NON_FINITE_CODE, finite_rows
from atelier.store import METADATA_FIELDS, CodeStore, ItemRecord, valid_job_id

log = logging.getLogger(__name__)

EncodeFn = Callable[[np.ndarray, int], dict[str, np.ndarray]]
EnqueueFn = Callable[[str, int], None]  # (job id, chunk index)
DEFAULT_CHUNK = 64
MAX_ITEM_ID_CHARS = 256
# A rate over less than this is noise (two timestamps of one chunk), not a throughput.
MIN_RATE_SECONDS = 1.0
PUMP_LOCK_SECONDS = 10.0


class ChunkRejected(Exception):
    """The model refused the whole batch for a reason retrying will not fix."""


class LimitExceeded(ValueError):
    """A request over one of the documented limits (entries per job, inline image bytes)."""


class QueueUnavailable(Exception):
    """The queue refused the job's work; its unqueued items are recorded as failed."""

    def __init__(self, job_id: str, reason: str):
        super().__init__(reason)
        self.job_id = job_id


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # every item failed, or the work could not be queued
    CANCELLED = "cancelled"


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobPolicy:
    """How jobs are cut, queued, bounded and kept (the encoder's settings)."""

    chunk_size: int = DEFAULT_CHUNK
    ttl_seconds: int = 7 * 24 * 3600
    max_queued_chunks: int = 32
    max_job_entries: int = 1_000_000
    max_inline_image_bytes: int = 4 * 1024 * 1024


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
    reason: str = ""
    chunks: int = 0
    queued_chunks: int = 0


# --- building a job's entries ---


def entries_from_csv(
    roots: CatalogueRoots,
    csv_path: str,
    image_dir: str | None = None,
    max_entries: int = JobPolicy.max_job_entries,
) -> list[dict[str, str]]:
    """Job entries (item id, image path and metadata) from a catalogue CSV inside the roots.

    Raises PathNotAllowed for a CSV or image folder outside the roots, FileNotFoundError for a
    missing CSV inside them, LimitExceeded past max_entries rows, and ValueError naming the
    line for a malformed file. Image paths are checked when a worker reads them: one outside
    the roots fails its item, not the job.
    """
    csv_file = roots.resolve(csv_path)
    folder = roots.resolve_dir(image_dir) if image_dir else None
    entries = []
    for item in iter_catalogue_csv(csv_file, folder):
        if len(entries) >= max_entries:
            raise LimitExceeded(
                f"the catalogue has more than {max_entries:,} rows (MAX_JOB_ENTRIES); "
                "split it into several jobs"
            )
        entries.append(
            {"item_id": item.item_id, "image_ref": str(item.image_path), **item.metadata()}
        )
    return entries


def normalise_entry(item_id: str, metadata: dict[str, str], image_ref: str, image: bytes) -> dict:
    """One job entry from a request's fields: the store's metadata fields, the image or its ref.

    An entry that carries its image is encoded from those bytes only: its image_ref becomes
    "inline", so no path rides along into the generation.
    """
    entry: dict = {"item_id": item_id, "image_ref": "inline" if image else image_ref}
    entry.update({k: metadata.get(k, "") for k in METADATA_FIELDS if k != "image_ref"})
    if image:
        entry["image"] = image
    return entry


def validate_entries(entries: Sequence[dict], policy: JobPolicy) -> None:
    """Ids present, short and unique; the job and every inline image within the limits."""
    if not entries:
        raise ValueError("a job needs at least one item")
    if len(entries) > policy.max_job_entries:
        raise LimitExceeded(
            f"a job holds at most {policy.max_job_entries:,} entries (MAX_JOB_ENTRIES), "
            f"got {len(entries):,}"
        )
    seen: set[str] = set()
    for entry in entries:
        item_id = str(entry.get("item_id", "")).strip()
        if not item_id:
            raise ValueError("every item needs a non-empty item_id")
        if len(item_id) > MAX_ITEM_ID_CHARS:
            raise ValueError(f"item ids are at most {MAX_ITEM_ID_CHARS} characters")
        if not item_id.isprintable():
            raise ValueError(f"item id {item_id[:40]!r} holds control characters")
        if item_id in seen:
            raise ValueError(f"item_id {item_id!r} appears twice in the job")
        seen.add(item_id)
        image = entry.get("image")
        if image is not None and len(image) > policy.max_inline_image_bytes:
            raise LimitExceeded(
                f"item {item_id!r}: the inline image is {len(image):,} bytes; the limit is "
                f"{policy.max_inline_image_bytes:,} (MAX_INLINE_IMAGE_BYTES)"
            )


# --- submitting and queueing ---


def create(
    store: CodeStore,
    version: int,
    entries: Sequence[dict],
    image_size: tuple[int, int],
    policy: JobPolicy = JobPolicy(),
) -> str:
    """Validate and record a job; nothing is queued yet (see pump)."""
    validate_entries(entries, policy)
    return store.create_job(version, entries, policy.chunk_size, policy.ttl_seconds, image_size)


def pump(
    store: CodeStore,
    job_id: str,
    enqueue: EnqueueFn,
    window: int,
    wait: float = PUMP_LOCK_SECONDS,
) -> int:
    """Queue the job's next chunks until `window` of them are in flight. Returns chunks queued.

    Each chunk is handed to the queue before the high-water mark passes it, so a crash in
    between queues that chunk twice (harmless: chunks are idempotent) and never skips it. One
    pump per job at a time (a Redis lock), so concurrent pumps do not queue the same chunk.
    Exceptions from `enqueue` propagate; what was queued before stays counted. `wait`: how long
    to wait for another pump of the same job to finish (0: not at all).
    """
    state = store.queue_state(job_id)
    if state is None or state.cancelled or state.finished >= state.chunks:
        store.forget_active(job_id)
        return 0
    if state.queued >= state.chunks or state.in_flight >= window:
        return 0
    lock = store.pump_lock(job_id, PUMP_LOCK_SECONDS)
    if not lock.acquire(blocking=wait > 0, blocking_timeout=wait or None):
        return 0  # another pump holds it; the next finished chunk or scan tops up
    sent = 0
    try:
        while True:
            state = store.queue_state(job_id)
            if state is None or state.cancelled:
                store.forget_active(job_id)
                return sent
            if state.queued >= state.chunks or state.in_flight >= window:
                return sent
            store.touch_chunk(job_id, state.queued, state.chunk_size)
            enqueue(job_id, state.queued)
            store.advance_queued(job_id, state.queued + 1)
            sent += 1
    finally:
        with contextlib.suppress(LockError):  # it expired meanwhile; nothing relies on it
            lock.release()


def fail_unqueued(store: CodeStore, job_id: str, reason: str) -> None:
    """Record every item of the chunks not yet queued as failed, and the job's reason."""
    state = store.queue_state(job_id)
    if state is None:
        return
    definition = store.job_definition(job_id)
    version = int(definition["model_version"])
    for index in range(state.queued, state.chunks):
        ids = store.chunk_item_ids(job_id, index, state.chunk_size)
        store.record_chunk(job_id, version, [], dict.fromkeys(ids, reason), chunk_index=index)
    store.advance_queued(job_id, state.chunks)
    store.set_job_fields(job_id, reason=reason)


def submit(
    store: CodeStore,
    version: int,
    entries: Sequence[dict],
    image_size: tuple[int, int],
    enqueue: EnqueueFn,
    policy: JobPolicy = JobPolicy(),
) -> str:
    """Record the job and queue its first window of chunks. Tasks carry (job id, chunk), never arrays.

    When the queue refuses, the unqueued items are failed with the reason (the job ends FAILED
    if nothing was queued) and QueueUnavailable is raised with the job id.
    """
    job_id = create(store, version, entries, image_size, policy)
    try:
        pump(store, job_id, enqueue, policy.max_queued_chunks)
    except Exception as exc:
        reason = f"not queued: the queue refused the work ({type(exc).__name__})"
        log.warning("job %s: %s: %s", job_id, reason, exc)
        fail_unqueued(store, job_id, reason)
        raise QueueUnavailable(job_id, reason) from exc
    return job_id


def resume(store: CodeStore, enqueue: EnqueueFn, window: int) -> dict[str, int]:
    """Top up every job that may still have chunks to queue (an encoder's startup scan and its
    periodic one). Returns chunks queued per job; a queue failure is logged and retried later."""
    queued: dict[str, int] = {}
    for job_id in store.active_jobs():
        if not valid_job_id(job_id):
            store.forget_active(job_id)
            continue
        try:
            queued[job_id] = pump(store, job_id, enqueue, window)
        except Exception as exc:
            log.warning("job %s: could not queue its next chunks: %s", job_id, exc)
    return {job_id: n for job_id, n in queued.items() if n}


# --- encoding a chunk ---


def _load(
    entry: dict[bytes, bytes], size: tuple[int, int], roots: CatalogueRoots
) -> tuple[np.ndarray, str]:
    """The entry's pixels and the image_ref to keep with its codes."""
    inline = entry.get(b"image")
    if inline is not None:
        return decode_image(inline, size), "inline"
    reference = entry.get(b"image_ref", b"").decode()
    if not reference or reference == "inline":
        raise ImageError("no image and no image_ref")
    try:
        path = roots.resolve(reference)
    except FileNotFoundError:
        raise ImageError(f"missing file: {shown(reference)}") from None
    except PathNotAllowed as exc:
        raise ImageError(f"image_ref {exc}") from None
    return load_image_file(path, size), str(path)


def encode_entries(
    encode: EncodeFn,
    version: int,
    size: tuple[int, int],
    entries: Iterable[tuple[str, dict[bytes, bytes]]],
    roots: CatalogueRoots,
) -> tuple[list[ItemRecord], dict[str, str]]:
    """Codes of (item id, stored entry) pairs in one model call, and the reason of each item
    that failed (a bad or missing image, a non-finite code). Raises only for transient trouble."""
    images, kept, failures = [], [], {}
    for item_id, entry in entries:
        if not entry:
            failures[item_id] = "job entry missing (expired?)"
            continue
        try:
            pixels, reference = _load(entry, size, roots)
        except ImageError as exc:
            failures[item_id] = str(exc)
            continue
        images.append(pixels)
        kept.append((item_id, entry, reference))
    records = []
    if images:
        try:
            codes = encode(np.stack(images), version)
            finite = finite_rows(codes)
        except ChunkRejected as exc:
            failures.update({item_id: str(exc) for item_id, _, _ in kept})
            kept = []
        for row, (item_id, entry, reference) in enumerate(kept):
            if not finite[row]:
                failures[item_id] = NON_FINITE_CODE
                continue
            metadata = {
                k.decode(): v.decode() for k, v in entry.items() if k not in (b"image", b"item_id")
            }
            metadata["image_ref"] = reference
            records.append(
                ItemRecord(
                    item_id, codes["mu"][row], codes["sigma"][row], codes["z"][row], metadata
                )
            )
    return records, failures


def upsert_items(
    store: CodeStore,
    encode: EncodeFn,
    version: int,
    size: tuple[int, int],
    entries: Sequence[dict],
    roots: CatalogueRoots,
) -> tuple[list[str], dict[str, str]]:
    """Encode entries (normalised by `normalise_entry`) and write their codes into a generation
    at once, outside any job: the live path for a few new or changed items. Returns the ids
    written and the reason of each failure."""
    stored = [
        (
            str(entry["item_id"]),
            {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in entry.items()},
        )
        for entry in entries
    ]
    records, failures = encode_entries(encode, version, size, stored, roots)
    if records:
        store.upsert_codes(version, records)
    return [r.item_id for r in records], failures


def encode_chunk(
    store: CodeStore, encode: EncodeFn, job_id: str, chunk_index: int, roots: CatalogueRoots
) -> tuple[int, int]:
    """Encode one chunk of a job's items. Bad images are recorded by id and reason, never raised.

    Items already recorded (a redelivered chunk) are skipped. Returns (written, failed). Raises
    only for transient trouble (model server, Redis), which the caller retries; nothing is
    written for the chunk in that case.
    """
    definition = store.job_definition(job_id)
    if not definition:
        log.warning("job %s is unknown or expired; chunk %d dropped", job_id, chunk_index)
        return 0, 0
    if definition.get("cancelled") == "1":
        return 0, 0
    version = int(definition["model_version"])
    size = (int(definition["image_height"]), int(definition["image_width"]))
    item_ids = store.chunk_item_ids(job_id, chunk_index, int(definition["chunk_size"]))
    recorded = store.recorded_ids(job_id, item_ids)
    todo = [item_id for item_id in item_ids if item_id not in recorded]
    records, failures = encode_entries(
        encode, version, size, zip(todo, store.job_entries(job_id, todo), strict=True), roots
    )
    store.record_chunk(job_id, version, records, failures, chunk_index=chunk_index)
    return len(records), len(failures)


def fail_chunk(store: CodeStore, job_id: str, chunk_index: int, reason: str) -> int:
    """Record every item of a chunk not yet recorded as failed (the queue gave up on it)."""
    definition = store.job_definition(job_id)
    if not definition:
        return 0
    ids = store.chunk_item_ids(job_id, chunk_index, int(definition["chunk_size"]))
    recorded = store.recorded_ids(job_id, ids)
    failures = {i: reason for i in ids if i not in recorded}
    store.record_chunk(
        job_id, int(definition["model_version"]), [], failures, chunk_index=chunk_index
    )
    return len(failures)


def poisoned(
    store: CodeStore, job_id: str, chunk_index: int, attempt: int, max_deliveries: int
) -> bool:
    """Count a delivery of (chunk, attempt); past max_deliveries, fail the chunk's items.

    A chunk whose worker dies under it (out of memory, a crash in a decoder) is redelivered;
    without a cap it would kill worker after worker forever. Returns True when the caller
    must not run the chunk (also for an unknown or expired job).
    """
    deliveries = store.begin_chunk(job_id, chunk_index, attempt)
    if deliveries == 0:
        return True
    if deliveries <= max_deliveries:
        return False
    killed = deliveries - 1
    log.error(
        "job %s: chunk %d killed its worker %d times; failing it", job_id, chunk_index, killed
    )
    fail_chunk(store, job_id, chunk_index, f"chunk killed its worker {killed} times")
    return True


# --- progress ---


def items_per_second(count: int, start: float, end: float) -> float:
    """Items over the job's real elapsed time, never over less than MIN_RATE_SECONDS."""
    return count / max(end - start, MIN_RATE_SECONDS) if count else 0.0


def progress(
    store: CodeStore, job_id: str, max_failures: int = 0, now: float | None = None
) -> JobProgress | None:
    """Progress derived from the job's sets: nothing is counted twice, whatever ran twice."""
    if not valid_job_id(job_id):
        return None
    raw = store.job_progress(job_id, max_failures)
    return None if raw is None else progress_of(raw, time.time() if now is None else now)


def progress_of(raw: dict, now: float) -> JobProgress:
    """A job's progress from its stored record (store.job_progress)."""
    total, done, failed = int(raw["total"]), int(raw["done"]), int(raw["failed"])
    finished_count = done + failed
    created = float(raw["created"])
    started = float(raw.get("started") or created)
    finished_at = float(raw["finished"]) if raw.get("finished") else 0.0
    if raw.get("cancelled") == "1":
        state = JobState.CANCELLED
    elif finished_count >= total:
        state = JobState.SUCCEEDED if done else JobState.FAILED
    elif finished_count or raw.get("started"):
        state = JobState.RUNNING
    else:
        state = JobState.QUEUED
    cancelled_at = float(raw.get("updated") or now)
    end = cancelled_at if state is JobState.CANCELLED else (finished_at or now)
    rate = items_per_second(finished_count, started, end)
    eta = (total - finished_count) / rate if rate and state is JobState.RUNNING else 0.0
    reason = raw.get("reason", "")
    if state is JobState.FAILED and not reason:
        reason = "every item failed; see the failures"
    return JobProgress(
        job_id=raw["job_id"],
        model_version=int(raw["model_version"]),
        state=state,
        total=total,
        done=done,
        failed=failed,
        items_per_second=rate,
        eta_seconds=eta,
        created=created,
        finished=finished_at if state in (JobState.SUCCEEDED, JobState.FAILED) else 0.0,
        failures=raw["failures"],
        reason=reason,
        chunks=int(raw.get("chunks", 0)),
        queued_chunks=int(raw.get("queued", 0)),
    )


def unfinished(store: CodeStore) -> list[JobProgress]:
    """The progress of every job not finished yet (what an operator's dashboard follows)."""
    now = time.time()
    found = []
    for job_id in store.active_jobs():
        raw = store.job_progress(job_id) if valid_job_id(job_id) else None
        if raw is not None:
            job = progress_of(raw, now)
            if job.state not in FINISHED:
                found.append(job)
    return found


def requeue_lost(
    store: CodeStore,
    enqueue: EnqueueFn,
    queue_idle: Callable[[], bool],
    quiet_seconds: float,
    now: float | None = None,
) -> int:
    """Queue again the chunks of unfinished jobs that no task carries any more. Returns how many.

    Celery's Redis transport pops a task and only then records it as unacknowledged; if Redis
    dies in between (the chaos benchmark's Redis kill), the task is gone and its job would never
    finish. A job has lost chunks when it has queued chunks that are not finished, it is quiet
    (no progress, submission or requeue for quiet_seconds) and the queue is idle (no task
    waiting, running or held for a retry). Chunks are idempotent, so a task caught in flight by
    this check only runs twice.
    """
    now = time.time() if now is None else now
    requeued = 0
    for job_id in store.active_jobs():
        state = store.queue_state(job_id) if valid_job_id(job_id) else None
        if state is None or state.cancelled or state.finished >= state.chunks:
            store.forget_active(job_id)
            continue
        if state.in_flight <= 0:
            continue  # nothing queued is outstanding; pump queues the rest
        definition = store.job_definition(job_id)
        last = max(float(definition.get(k) or 0.0) for k in ("created", "updated", "requeued"))
        if now - last < quiet_seconds:
            continue
        if not queue_idle():
            break  # work is in flight: nothing can be called lost yet
        lost = store.unfinished_chunks(job_id, state.queued)
        for index in lost:
            enqueue(job_id, index)
        store.set_job_fields(job_id, requeued=repr(now))
        requeued += len(lost)
        log.warning("job %s: queued %d lost chunks again", job_id, len(lost))
    return requeued


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
    from atelier.modelinfo import read_metadata
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
