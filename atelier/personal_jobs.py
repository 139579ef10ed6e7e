"""Import and training jobs as plain functions: submit, run (from a Celery task), report progress.

An import reads its CSV in batches; each batch's events, the job's counts, its refused rows and
its cursor (the next line to read) are written by one Redis script, so a task killed mid-file and
redelivered resumes at the cursor, and a batch is never counted twice. Events' ids derive from the
file's SHA-256 and the line, so even a batch replayed past the cursor (or the same file imported
again) adds nothing to the stream.

Training reads the whole stream, trains on the codes (μ) of the generation named when the job was
submitted, and stores the model with its popularity counts under a new preference model version
(atelier/personal_store.py), once per job however often the task runs.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from atelier.confinement import CatalogueRoots
from atelier.interactions import (
    Event,
    InteractionLog,
    Row,
    csv_event_id,
    file_digest,
    iter_rows,
    known_items,
    read_header,
    timestamp_problem,
)
from atelier.personal_store import IMPORT, TRAIN, PreferenceModel, PreferenceStore, pjob_key
from atelier.store import CodeStore

log = logging.getLogger(__name__)
IMPORT_BATCH = 2000
MAX_STORED_FAILURES = 10_000
TOP_USERS = 1000
# The kind a service can train and serve: VBPR over the served codes. The baselines (vbpr_pca
# needs the photos' PCA features, which only the offline evaluation computes) are compared there.
SERVABLE_KINDS = ("vbpr_codes",)
DEFAULT_KIND = "vbpr_codes"
MAX_EPOCHS = 1000


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class JobView:
    """A job's progress as a caller sees it."""

    job_id: str
    kind: str
    state: JobState
    total: int
    done: int
    failed: int
    duplicates: int
    created: float
    finished: float
    reason: str
    preference_version: int
    model_kind: str
    model_version: int
    failures: list[tuple[int, str]] = field(default_factory=list)


class JobGone(Exception):
    """The job expired or never existed."""


# --- imports ---


def submit_import(
    prefs: PreferenceStore,
    roots: CatalogueRoots,
    csv_path: str,
    model_version: int,
    ttl_seconds: int,
) -> str:
    """Check the CSV (inside the roots, a readable header) and record an import job.

    Raises PathNotAllowed, FileNotFoundError, or ValueError for a bad header.
    """
    real = roots.resolve(csv_path)
    read_header(real)
    return prefs.create_job(
        IMPORT,
        {
            "csv_path": str(real),
            "digest": file_digest(real),
            "model_version": str(model_version),
            "cursor": "2",
        },
        ttl_seconds,
    )


def run_import(
    prefs: PreferenceStore,
    events_log: InteractionLog,
    roots: CatalogueRoots,
    job_id: str,
    batch: int = IMPORT_BATCH,
    clock: Callable[[], float] = time.time,
    slice_seconds: float | None = None,
) -> bool:
    """Import the job's rows from its cursor on; idempotent, safe to run again after a crash.

    With `slice_seconds`, stop at the first batch boundary after that long and return False:
    the caller queues the rest as a new task, so no single task outlives the queue's visibility
    timeout (past it, the broker hands a still-running task to another worker). True when the
    job is finished (or another delivery owns it).
    """
    job = prefs.job(job_id)
    if job is None:
        raise JobGone(job_id)
    if job.get("finished"):
        return True
    key = pjob_key(job_id)
    deadline = None if slice_seconds is None else time.monotonic() + slice_seconds
    try:
        real = roots.resolve(job["csv_path"])  # checked again when read: roots may have changed
        if file_digest(real) != job["digest"]:
            raise ValueError("the file changed after the import was submitted; submit it again")
        cursor = int(job["cursor"])
        version = int(job["model_version"])
        pending: list[Row] = []
        for row in iter_rows(real, cursor):
            pending.append(row)
            if len(pending) >= batch:
                cursor = _import_rows(prefs, events_log, key, job, pending, cursor, version, clock)
                if cursor < 0:
                    return True  # another delivery is importing this job
                pending = []
                if deadline is not None and time.monotonic() >= deadline:
                    return False  # the rest in the next slice, from the stored cursor
        if pending:
            cursor = _import_rows(prefs, events_log, key, job, pending, cursor, version, clock)
            if cursor < 0:
                return True
    except (ValueError, OSError) as exc:
        prefs.set_job_fields(job_id, reason=str(exc), finished=repr(clock()))
        log.info("import %s failed: %s", job_id, exc)
        return True
    prefs.set_job_fields(job_id, finished=repr(clock()))
    log.info("import %s finished", job_id)
    return True


def _import_rows(
    prefs: PreferenceStore,
    events_log: InteractionLog,
    key: str,
    job: dict[str, str],
    rows: list[Row],
    cursor: int,
    version: int,
    clock: Callable[[], float],
) -> int:
    """Record one batch; returns the next cursor, or -1 when another delivery got there first."""
    now = clock()
    failures: list[tuple[int, str]] = []
    good: list[Row] = []
    for row in rows:
        reason = row.reason or timestamp_problem(row.timestamp, now)
        if reason:
            failures.append((row.line, reason))
        else:
            good.append(row)
    flags = known_items(events_log.redis, version, [r.item_id for r in good])
    events = []
    for row, known in zip(good, flags, strict=True):
        if known:
            event_id = csv_event_id(row)
            events.append(Event(event_id, row.user_id, row.item_id, row.kind, row.timestamp))
        else:
            failures.append(
                (row.line, f"unknown item {row.item_id[:80]!r} in generation {version}")
            )
    next_cursor = rows[-1].line + 1
    recorded = events_log.record_batch_for_job(
        key, events, cursor, next_cursor, len(rows), failures, now, MAX_STORED_FAILURES
    )
    return next_cursor if recorded else -1


# --- training ---


def check_kind(kind: str) -> str:
    kind = kind or DEFAULT_KIND
    if kind not in SERVABLE_KINDS:
        raise ValueError(
            f"model kind {kind[:40]!r} cannot be served; choose {' or '.join(SERVABLE_KINDS)} "
            "(the baselines are compared offline: python -m bench.personalisation)"
        )
    return kind


def submit_training(
    prefs: PreferenceStore,
    kind: str,
    epochs: int,
    seed: int,
    serve: bool,
    model_version: int,
    ttl_seconds: int,
) -> str:
    kind = check_kind(kind)
    if not 0 <= epochs <= MAX_EPOCHS:
        raise ValueError(f"epochs must be between 0 and {MAX_EPOCHS}, got {epochs}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return prefs.create_job(
        TRAIN,
        {
            "model_kind": kind,
            "epochs": str(epochs),
            "seed": str(seed),
            "serve": "1" if serve else "0",
            "model_version": str(model_version),
            # Served when trained only if this is still the served model then: a job that
            # finishes late (after a newer model, or an admin's rollback) must not override it.
            "served_at_submit": str(prefs.served_version() or ""),
        },
        ttl_seconds,
    )


def run_training(
    prefs: PreferenceStore,
    codes: CodeStore,
    events_log: InteractionLog,
    job_id: str,
    clock: Callable[[], float] = time.time,
) -> int:
    """Train the job's model and store it; returns its preference version (-1: none).

    A job that already has its version returns it at once; a failure the caller cannot fix by
    retrying (no interactions, an unknown generation) marks the job FAILED with the reason.
    """
    from atelier import preference  # only workers train; services import it lazily too

    job = prefs.job(job_id)
    if job is None:
        raise JobGone(job_id)
    if job.get("preference_version"):
        return int(job["preference_version"])
    if job.get("reason"):
        return -1
    prefs.set_job_fields(job_id, started=repr(clock()))
    version = int(job["model_version"])
    try:
        matrix = codes.load_codes(version)
        if not matrix.item_ids:
            raise ValueError(f"generation {version} holds no codes")
        row_of = {item_id: row for row, item_id in enumerate(matrix.item_ids)}
        read = used = 0
        triples = []
        for event in events_log.read():
            read += 1
            if event.item_id in row_of:
                triples.append((event.user_id, event.item_id, event.timestamp))
        used = len(triples)
        prefs.set_job_fields(job_id, rows=str(read), done=str(used))
        if not triples:
            raise ValueError(
                f"no recorded interaction is with an item of generation {version}; "
                "record or import interactions first"
            )
        features = matrix.mu.astype(np.float32)
        data = preference.training_data(triples, matrix.item_ids, features)
        options = {"kind": job["model_kind"], "seed": int(job["seed"])}
        if int(job["epochs"]):
            options["epochs"] = int(job["epochs"])
        started = time.perf_counter()
        ranker = preference.train_vbpr(data, **options)
        popularity = np.asarray(preference.popularity_scores(data), dtype=np.float64)
        counts = np.bincount(data.pairs[:, 0], minlength=len(data.user_ids))
        top = np.argsort(-counts, kind="stable")[:TOP_USERS]
        model = PreferenceModel(
            version=0,
            kind=job["model_kind"],
            model_version=version,
            users=len(data.user_ids),
            items=len(data.item_ids),
            interactions=len(data.pairs),
            trained_at=clock(),
            model=ranker.to_bytes(),
            item_ids=list(data.item_ids),
            popularity=popularity,
            top_users=[(data.user_ids[u], int(counts[u])) for u in top.tolist()],
        )
    except ValueError as exc:
        prefs.set_job_fields(job_id, reason=str(exc), finished=repr(clock()))
        log.info("training %s failed: %s", job_id, exc)
        return -1
    stored = prefs.finish_training(job_id, model, job.get("serve") == "1")
    log.info(
        "training %s: preference model %d (%s, %d users, %d interactions) in %.1fs",
        job_id, stored, model.kind, model.users, model.interactions,
        time.perf_counter() - started,
    )  # fmt: skip
    return stored


def poisoned(
    prefs: PreferenceStore,
    job_id: str,
    attempt: int | str,
    max_deliveries: int,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Count a delivery of the job's task `attempt`; past max_deliveries the job fails with that
    reason instead of killing worker after worker. True when the caller must not run it (also
    for a job that is gone)."""
    deliveries = prefs.count_delivery(job_id, attempt)
    if deliveries == 0:
        log.warning("job %s is gone (expired?); nothing to do", job_id)
        return True
    if deliveries <= max_deliveries:
        return False
    prefs.set_job_fields(
        job_id,
        reason=f"the job's task killed its worker {deliveries - 1} times",
        finished=repr(clock()),
    )
    return True


# --- progress ---


def state_of(job: dict[str, str]) -> JobState:
    if job.get("reason"):
        return JobState.FAILED
    if job["kind"] == TRAIN:
        if job.get("preference_version"):
            return JobState.SUCCEEDED
        return JobState.RUNNING if job.get("started") else JobState.QUEUED
    if job.get("finished"):
        accepted = int(job.get("done", 0)) + int(job.get("duplicates", 0))
        return JobState.SUCCEEDED if accepted or not int(job.get("failed", 0)) else JobState.FAILED
    return JobState.RUNNING if job.get("started") else JobState.QUEUED


def progress(prefs: PreferenceStore, job_id: str, max_failures: int = 0) -> JobView | None:
    job = prefs.job(job_id)
    if job is None:
        return None
    state = state_of(job)
    # A trained model kept unserved (another was served meanwhile) is a success with a note.
    reason = job.get("reason", "") or job.get("not_served", "")
    if state is JobState.FAILED and not reason:
        reason = "every row was refused; see the failures"
    finished = float(job["finished"]) if job.get("finished") else 0.0
    return JobView(
        job_id=job_id,
        kind=job["kind"],
        state=state,
        total=int(job.get("rows", 0)),
        done=int(job.get("done", 0)),
        failed=int(job.get("failed", 0)),
        duplicates=int(job.get("duplicates", 0)),
        created=float(job["created"]),
        finished=finished,
        reason=reason,
        preference_version=int(job.get("preference_version", 0)),
        model_kind=job.get("model_kind", ""),
        model_version=int(job.get("model_version", 0)),
        failures=prefs.job_failures(job_id, max_failures) if job["kind"] == IMPORT else [],
    )
