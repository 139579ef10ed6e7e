"""Job progress from its stored record (states, rate, ETA) and the limits on what a job may hold."""

from __future__ import annotations

import pytest

from atelier import jobs
from atelier.jobs import JobPolicy, JobState, LimitExceeded, progress_of, validate_entries

T0 = 1_700_000_000.0


def _record(total: int, done: int, failed: int = 0, **fields: str) -> dict:
    return {
        "job_id": "0" * 32,
        "model_version": "1",
        "total": str(total),
        "created": repr(T0),
        "cancelled": "0",
        "done": done,
        "failed": failed,
        "failures": {},
        **fields,
    }


def test_a_20_item_job_in_one_chunk_reports_a_sane_rate():
    """The bug: started and finished stamped by one call 12 µs apart gave 1,677,721.6 items/s."""
    raw = _record(20, 20, started=repr(T0 + 0.5), finished=repr(T0 + 0.5 + 1.1920929e-05))
    progress = progress_of(raw, now=T0 + 60)
    assert progress.state is JobState.SUCCEEDED
    assert progress.items_per_second == pytest.approx(20.0)  # never over less than a second
    assert progress.finished == pytest.approx(T0 + 0.5 + 1.1920929e-05)


def test_rate_and_eta_come_from_real_elapsed_time():
    finished = progress_of(_record(20, 18, 2, started=repr(T0), finished=repr(T0 + 4)), T0 + 99)
    assert finished.items_per_second == pytest.approx(5.0)  # the finish time, not "now"
    assert finished.eta_seconds == 0.0
    running = progress_of(_record(100, 30, started=repr(T0), updated=repr(T0 + 5)), now=T0 + 10)
    assert running.state is JobState.RUNNING
    assert running.items_per_second == pytest.approx(3.0)
    assert running.eta_seconds == pytest.approx(70 / 3.0)
    assert running.finished == 0.0


def test_states():
    assert progress_of(_record(5, 0), T0).state is JobState.QUEUED
    assert progress_of(_record(5, 0, started=repr(T0)), T0).state is JobState.RUNNING
    assert progress_of(_record(5, 3, 2), T0).state is JobState.SUCCEEDED
    failed = progress_of(_record(5, 0, 5), T0)
    assert failed.state is JobState.FAILED and "every item failed" in failed.reason
    refused = progress_of(_record(5, 0, 5, reason="not queued: the queue refused the work"), T0)
    assert refused.state is JobState.FAILED and refused.reason.startswith("not queued")
    cancelled = progress_of(_record(5, 1, cancelled="1", updated=repr(T0 + 2)), T0 + 50)
    assert cancelled.state is JobState.CANCELLED and cancelled.items_per_second == 1 / 2


def test_entry_limits_are_enforced_with_clear_reasons():
    policy = JobPolicy(max_job_entries=3, max_inline_image_bytes=10)
    validate_entries([{"item_id": str(i)} for i in range(3)], policy)
    with pytest.raises(LimitExceeded, match=r"at most 3 entries \(MAX_JOB_ENTRIES"):
        validate_entries([{"item_id": str(i)} for i in range(4)], policy)
    with pytest.raises(LimitExceeded, match=r"11 bytes; the limit is 10 \(MAX_INLINE_IMAGE_BYTES"):
        validate_entries([{"item_id": "a", "image": b"x" * 11}], policy)
    with pytest.raises(ValueError, match="at most 256 characters"):
        validate_entries([{"item_id": "a" * 257}], policy)


def test_an_inline_entry_never_carries_a_path():
    entry = jobs.normalise_entry("a", {}, "/etc/passwd", b"\xff\xd8\xff")
    assert entry["image_ref"] == "inline" and entry["image"] == b"\xff\xd8\xff"
    assert jobs.normalise_entry("b", {}, "/data/b.jpg", b"")["image_ref"] == "/data/b.jpg"
