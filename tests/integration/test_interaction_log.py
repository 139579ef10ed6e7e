"""The interactions stream, CSV import jobs and preference model versions on a real Redis."""

from __future__ import annotations

import time

import numpy as np
import pytest

from atelier import personal_jobs
from atelier.confinement import CatalogueRoots
from atelier.interactions import Event, InteractionLog, csv_event_id
from atelier.personal_store import PreferenceModel, PreferenceStore, pjob_key
from atelier.store import ItemRecord, ModelRecord

pytestmark = pytest.mark.integration
ITEMS = [str(i) for i in range(100, 120)]


@pytest.fixture()
def served(store):
    """Generation 1 holding ITEMS, as the encoder would leave it."""
    records = [
        ItemRecord(i, np.zeros(4, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32))
        for i in ITEMS
    ]
    store.register_model(ModelRecord(1, 4, 80, 64, "m1", np.zeros(4, np.float32)))
    store.upsert_codes(1, records)
    return 1


def test_events_are_accepted_deduplicated_or_rejected_each_with_a_reason(store, served):
    log = InteractionLog(store.redis)
    now = time.time()
    events = [
        Event("a", "u1", "100", "view", now - 10),
        Event("b", "u1", "101", "purchase", now - 5),
        Event("a", "u1", "100", "view", now - 10),  # the same event twice in one call
        Event("c", "u2", "999", "click", now - 5),  # not in the generation
        Event("d", "u2", "102", "cart", now + 3600),  # in the future
        Event("", "u2", "102", "cart", now),
    ]
    outcomes = log.record(events, served, now)
    assert [(o.event_id, o.outcome) for o in outcomes] == [
        ("a", "accepted"),
        ("b", "accepted"),
        ("a", "duplicate"),
        ("c", "rejected"),
        ("d", "rejected"),
        ("", "rejected"),
    ]
    assert "unknown item '999' in generation 1" in outcomes[3].reason
    assert "future" in outcomes[4].reason
    assert "event_id is empty" in outcomes[5].reason
    # a retried call adds nothing
    again = log.record(events[:2], served, now)
    assert [o.outcome for o in again] == ["duplicate", "duplicate"]
    assert log.count() == 2
    assert [(e.event_id, e.user_id, e.item_id, e.kind) for e in log.read(batch=1)] == [
        ("a", "u1", "100", "view"),
        ("b", "u1", "101", "purchase"),
    ]


def _csv(path, rows: int, bad_every: int = 7):
    lines = ["user_id,item_id,timestamp,kind"]
    expected_good = 0
    for n in range(rows):
        if n % bad_every == 3:
            lines.append(f"u{n % 5},nope-{n},1700000000,view")  # unknown item
        else:
            lines.append(f"u{n % 5},{ITEMS[n % len(ITEMS)]},{1_700_000_000 + n},click")
            expected_good += 1
    path.write_text("\n".join(lines) + "\n")
    return expected_good


def test_an_import_resumes_at_its_cursor_and_counts_every_row_once(store, served, tmp_path):
    prefs = PreferenceStore(store.redis)
    log = InteractionLog(store.redis)
    roots = CatalogueRoots.of([tmp_path])
    path = tmp_path / "events.csv"
    good = _csv(path, 95)
    job_id = personal_jobs.submit_import(prefs, roots, str(path), served, 3600)
    job = prefs.job(job_id)
    # A first delivery records two batches, then dies (the worker was killed).
    rows = list(personal_jobs.iter_rows(path))
    cursor = 2
    for batch in (rows[:10], rows[10:20]):
        cursor = personal_jobs._import_rows(
            prefs, log, pjob_key(job_id), job, batch, cursor, served, time.time
        )
    assert prefs.job(job_id)["cursor"] == "22"
    # A stale delivery replaying the first batch writes nothing.
    assert (
        personal_jobs._import_rows(
            prefs, log, pjob_key(job_id), job, rows[:10], 2, served, time.time
        )
        == -1
    )
    # The redelivery carries on from the cursor.
    personal_jobs.run_import(prefs, log, roots, job_id, batch=8)
    view = personal_jobs.progress(prefs, job_id, max_failures=100)
    assert view.state is personal_jobs.JobState.SUCCEEDED
    assert (view.total, view.done, view.failed, view.duplicates) == (95, good, 95 - good, 0)
    assert log.count() == good
    assert {line for line, _ in view.failures} == {n + 2 for n in range(95) if n % 7 == 3}
    assert all("unknown item" in reason for _, reason in view.failures)
    assert {e.event_id for e in log.read()} == {
        csv_event_id(row) for row in rows if not row.item_id.startswith("nope-")
    }
    # The same file imported again adds nothing: every good row is a duplicate.
    second = personal_jobs.submit_import(prefs, roots, str(path), served, 3600)
    personal_jobs.run_import(prefs, log, roots, second)
    view = personal_jobs.progress(prefs, second)
    assert (view.done, view.duplicates, view.failed) == (0, good, 95 - good)
    assert view.state is personal_jobs.JobState.SUCCEEDED
    assert log.count() == good
    # A re-export with the same rows in another order plus new ones adds only the new ones.
    lines = path.read_text().splitlines()
    extra = [f"u9,{ITEMS[0]},{1_750_000_000 + n},cart" for n in range(3)]
    reexport = tmp_path / "reexport.csv"
    reexport.write_text("\n".join([lines[0], *extra, *reversed(lines[1:])]) + "\n")
    third = personal_jobs.submit_import(prefs, roots, str(reexport), served, 3600)
    personal_jobs.run_import(prefs, log, roots, third)
    view = personal_jobs.progress(prefs, third)
    assert (view.done, view.duplicates) == (3, good)
    assert log.count() == good + 3


def test_an_import_of_a_file_changed_after_submission_fails_with_the_reason(
    store, served, tmp_path
):
    prefs = PreferenceStore(store.redis)
    roots = CatalogueRoots.of([tmp_path])
    path = tmp_path / "events.csv"
    _csv(path, 5)
    job_id = personal_jobs.submit_import(prefs, roots, str(path), served, 3600)
    _csv(path, 6)
    personal_jobs.run_import(prefs, InteractionLog(store.redis), roots, job_id)
    view = personal_jobs.progress(prefs, job_id)
    assert view.state is personal_jobs.JobState.FAILED
    assert "the file changed" in view.reason


def _model(kind: str = "vbpr_codes") -> PreferenceModel:
    return PreferenceModel(
        version=0,
        kind=kind,
        model_version=1,
        users=2,
        items=3,
        interactions=4,
        trained_at=1.0,
        model=b"\x00model bytes\xff",
        item_ids=["100", "101", "102"],
        popularity=np.array([3.0, 1.0, 0.0]),
        top_users=[("u1", 3), ("u2", 1)],
    )


def test_a_training_job_makes_one_model_version_however_often_it_finishes(store):
    prefs = PreferenceStore(store.redis)
    store.redis.sadd("atelier:gen:1:items", "100")  # the generation the models rank over
    job_id = personal_jobs.submit_training(prefs, "", 0, 0, True, 1, 3600)
    assert prefs.finish_training(job_id, _model(), serve=True) == 1
    assert prefs.finish_training(job_id, _model(), serve=True) == 1  # a redelivery
    assert prefs.versions() == [1] and prefs.served_version() == 1
    stored = prefs.model(1)
    assert stored.model == b"\x00model bytes\xff"
    assert stored.popularity.tolist() == [3.0, 1.0, 0.0]
    assert stored.top_users == [("u1", 3), ("u2", 1)]
    other = personal_jobs.submit_training(prefs, "vbpr_codes", 5, 1, False, 1, 3600)
    assert prefs.finish_training(other, _model(), serve=False) == 2
    assert prefs.served_version() == 1  # serve=False keeps the served one
    prefs.serve(2)
    assert prefs.served_version() == 2
    with pytest.raises(KeyError, match="does not exist"):
        prefs.serve(7)
    assert prefs.served_version() == 2
    assert personal_jobs.progress(prefs, job_id).preference_version == 1


def test_a_training_job_that_finishes_late_does_not_override_a_newer_served_model(store):
    prefs = PreferenceStore(store.redis)
    early = personal_jobs.submit_training(prefs, "", 0, 0, True, 1, 3600)  # nothing served yet
    late = personal_jobs.submit_training(prefs, "", 0, 0, True, 1, 3600)
    assert prefs.finish_training(early, _model(), serve=True) == 1
    assert prefs.served_version() == 1
    # `late` was submitted when nothing was served; model 1 was served while it ran.
    assert prefs.finish_training(late, _model(), serve=True) == 2
    assert prefs.served_version() == 1
    view = personal_jobs.progress(prefs, late)
    assert view.state is personal_jobs.JobState.SUCCEEDED
    assert "model 1 was served while this job ran" in view.reason
    # Submitted while 1 is served, finished while 1 still is: served.
    third = personal_jobs.submit_training(prefs, "", 0, 0, True, 1, 3600)
    assert prefs.finish_training(third, _model(), serve=True) == 3
    assert prefs.served_version() == 3
    assert personal_jobs.progress(prefs, third).reason == ""


def test_the_generation_a_served_preference_model_ranks_cannot_be_removed(store):
    prefs = PreferenceStore(store.redis)
    job_id = personal_jobs.submit_training(prefs, "", 0, 0, True, 1, 3600)
    assert prefs.finish_training(job_id, _model(), serve=True) == 1  # trained on generation 1
    store.redis.sadd("atelier:gen:1:items", "100")
    store.redis.sadd("atelier:gen:2:items", "100")
    store.redis.set("atelier:served", 2)
    with pytest.raises(ValueError, match="served preference model 1"):
        store.remove_generation(1)
    assert store.redis.exists("atelier:gen:1:items")
    # A model whose generation is gone cannot be served: it could never load.
    store.redis.delete("atelier:gen:1:items")
    store.redis.delete("atelier:pref:served")
    with pytest.raises(ValueError, match="was removed"):
        prefs.serve(1)
    assert prefs.served_version() is None


def test_an_import_in_time_slices_resumes_each_from_the_cursor(store, served, tmp_path):
    prefs = PreferenceStore(store.redis)
    log = InteractionLog(store.redis)
    roots = CatalogueRoots.of([tmp_path])
    path = tmp_path / "events.csv"
    good = _csv(path, 40)
    job_id = personal_jobs.submit_import(prefs, roots, str(path), served, 3600)
    slices = 0
    while not personal_jobs.run_import(prefs, log, roots, job_id, batch=8, slice_seconds=0):
        slices += 1
        assert personal_jobs.progress(prefs, job_id).state is personal_jobs.JobState.RUNNING
    assert slices == 5  # 40 rows in batches of 8, one per slice; a sixth finds nothing left
    view = personal_jobs.progress(prefs, job_id)
    assert view.state is personal_jobs.JobState.SUCCEEDED
    assert (view.total, view.done, view.failed, view.duplicates) == (40, good, 40 - good, 0)
    assert log.count() == good


def test_a_job_whose_task_keeps_killing_its_worker_fails_with_that_reason(store):
    prefs = PreferenceStore(store.redis)
    job_id = personal_jobs.submit_training(prefs, "", 0, 0, True, 1, 3600)
    assert [personal_jobs.poisoned(prefs, job_id, 0, 3) for _ in range(3)] == [False] * 3
    assert personal_jobs.poisoned(prefs, job_id, 0, 3)  # the fourth delivery of attempt 0
    view = personal_jobs.progress(prefs, job_id)
    assert view.state is personal_jobs.JobState.FAILED
    assert "killed its worker 3 times" in view.reason
    assert not personal_jobs.poisoned(prefs, job_id, "1:0", 3)  # another slice counts apart
    assert personal_jobs.poisoned(prefs, "0" * 32, 0, 3)  # a job that is gone
