"""Chaos smoke tests (the full run is `python -m bench.chaos`), on one supervised suite:

- kill -9 the only Celery worker, with its pool child, in the middle of a catalogue job: the
  launcher restarts it as compose would, it answers again, and the job finishes with every item
  encoded once, none lost or counted twice;
- a job whose tasks the queue lost (as when Redis dies between popping a task and recording it)
  still finishes: the encoder's job scan queues its unfinished chunks again.
"""

from __future__ import annotations

import time

import pytest

from atelier import jobs
from atelier.catalogue import read_catalogue_csv
from atelier.modelinfo import read_metadata
from atelier.store import CodeStore
from atelier.v1 import encoder_pb2_grpc
from bench.chaos import job_accounting, job_request
from bench.load import worker_pong
from services.common.launcher import local_suite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def suite(tmp_path_factory, models_dir):
    env = {
        "QUEUE_VISIBILITY_TIMEOUT_SECONDS": "3",
        "ENCODE_CHUNK_SIZE": "16",
        "JOB_REQUEUE_AFTER_SECONDS": "2",
        "JOB_RESUME_INTERVAL_SECONDS": "1",
    }
    work = tmp_path_factory.mktemp("chaos-smoke")
    with local_suite(work, models_dir, workers=1, extra_env=env, restart=True) as started:
        yield started


def wait_succeeded(store: CodeStore, job_id: str, deadline: float) -> jobs.JobProgress:
    while (progress := jobs.progress(store, job_id)).state != jobs.JobState.SUCCEEDED:
        assert time.monotonic() < deadline, f"job stuck at {progress.done}/{progress.total}"
        time.sleep(0.2)
    return progress


def test_killed_worker_is_restarted_and_the_job_loses_and_duplicates_nothing(suite, tiny_csv):
    store = CodeStore.from_url(suite.env["REDIS_URL"])
    items = read_catalogue_csv(tiny_csv)
    request, sources = job_request(items, "smoke", repeat=3)
    request.model_version = 1
    with suite.channel("encoder") as channel:
        job = encoder_pb2_grpc.EncoderServiceStub(channel).SubmitCatalogue(request, timeout=60)
    deadline = time.monotonic() + 120
    while (progress := jobs.progress(store, job.job_id)).done < len(sources) // 5:
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)
    worker = suite.processes["worker1"]
    killed = worker.kill_tree()
    assert len(killed) >= 2  # the worker and its prefork child
    assert progress.done + progress.failed < len(sources), "killed after the job ended"

    deadline = time.monotonic() + 90
    while not (worker.restarts == 1 and worker_pong(suite.env["REDIS_URL"])):
        assert time.monotonic() < deadline, "the worker did not come back"
        time.sleep(0.2)
    wait_succeeded(store, job.job_id, deadline)

    # Every copy of an image must carry the first copy's code.
    reference = {
        sources[i]: record.mu
        for i in sources
        if i.startswith("smoke-0-") and (record := store.item(1, i)) is not None
    }
    assert len(reference) == len(items)
    figures = job_accounting(store, job.job_id, sources, reference, version=1)
    assert figures["job_state"] == "succeeded"
    assert figures["job_done"] == len(sources) and figures["job_failed"] == 0
    assert figures["job_lost"] == 0
    assert figures["job_duplicated"] == 0
    assert figures["job_wrong_codes"] == 0


def test_a_job_whose_tasks_were_lost_still_finishes(suite, tiny_csv, models_dir):
    store = CodeStore.from_url(suite.env["REDIS_URL"])
    metadata = read_metadata(models_dir)
    jobs.ensure_model_registered(
        store, metadata.version, metadata.image_size, metadata.latent_dim, models_dir, None
    )
    entries = [
        jobs.normalise_entry(
            f"lost-{item.item_id}", item.metadata(), "", item.image_path.read_bytes()
        )
        for item in read_catalogue_csv(tiny_csv)[:40]
    ]
    # Recorded and counted as queued, but every task lost on the way, as a Redis crash can lose
    # one: nothing would ever finish the job without the encoder's scan.
    policy = jobs.JobPolicy(chunk_size=16)
    job_id = jobs.submit(
        store, metadata.version, entries, metadata.image_size, lambda *_: None, policy
    )
    assert store.queue_state(job_id).queued == 3

    progress = wait_succeeded(store, job_id, time.monotonic() + 60)
    assert (progress.done, progress.failed) == (len(entries), 0)
    assert store.job_definition(job_id).get("requeued")
    deadline = time.monotonic() + 10
    while job_id in store.active_jobs():  # retired by the next scan at the latest
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_requeue_lost_waits_for_a_quiet_job_and_an_idle_queue(store):
    entries = [{"item_id": f"i{n}", "image_ref": "unused.jpg"} for n in range(3)]
    policy = jobs.JobPolicy(chunk_size=2)
    job_id = jobs.submit(store, 1, entries, (80, 64), lambda *_: None, policy)
    queued: list[tuple[str, int]] = []

    def requeue(idle: bool, after: float) -> int:
        return jobs.requeue_lost(
            store, lambda j, c: queued.append((j, c)), lambda: idle, 30, time.time() + after
        )

    assert requeue(idle=True, after=5) == 0  # just submitted
    assert requeue(idle=False, after=60) == 0  # tasks in flight somewhere
    assert requeue(idle=True, after=60) == 2
    assert queued == [(job_id, 0), (job_id, 1)]
    assert requeue(idle=True, after=60) == 0  # just queued again: quiet once more first

    store.record_chunk(job_id, 1, [], {"i0": "bad image", "i1": "bad image"}, chunk_index=0)
    assert store.unfinished_chunks(job_id, 2) == [1]
    assert requeue(idle=True, after=600) == 1 and queued[-1] == (job_id, 1)
    store.record_chunk(job_id, 1, [], {"i2": "bad image"}, chunk_index=1)
    assert requeue(idle=True, after=1200) == 0
    assert job_id not in store.active_jobs()  # finished: retired
