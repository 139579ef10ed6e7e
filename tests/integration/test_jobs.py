"""Job retention, accounting, queueing and failure against real Redis, Celery workers and gRPC.

The first tests drive atelier.jobs directly against a real redis-server; the rest run the
encoder, a worker and the model server as processes and kill or restart them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from celery import Celery
from PIL import Image

from atelier import jobs
from atelier.confinement import CatalogueRoots
from atelier.modelinfo import ModelConfig, model_versions, read_metadata
from atelier.modelstore import LoadedEncoder, export_model
from atelier.store import ACTIVE_JOBS, CodeStore, ItemRecord, ModelRecord
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from atelier.vae import Autoencoder
from services.common.launcher import local_suite

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SIZE = (80, 64)


@pytest.fixture(scope="module")
def encoder(models_dir) -> LoadedEncoder:
    return LoadedEncoder(models_dir)


@pytest.fixture()
def store(store: CodeStore, encoder: LoadedEncoder) -> CodeStore:
    """The store with model version 1 registered, as the encoder service leaves it: codes are
    written under a registered version (its ε derives z)."""
    model = encoder.metadata
    store.register_model(ModelRecord(1, model.latent_dim, *SIZE, model.data_hash, model.epsilon))
    return store


def _encode_fn(encoder: LoadedEncoder):
    return lambda images, _version: encoder.encode(images)


def _entries(tiny_images: Path, n: int, prefix: str = "i") -> list[dict]:
    images = sorted(tiny_images.iterdir())
    return [
        {"item_id": f"{prefix}{i}", "image_ref": str(images[i % len(images)]), "sub_category": "X"}
        for i in range(n)
    ]


def _job_keys(store: CodeStore, job_id: str) -> list[bytes]:
    return list(store.redis.scan_iter(match=f"atelier:job:{job_id}*", count=1000))


def test_every_job_key_expires_and_codes_stay(store, encoder, tiny_images):
    roots = CatalogueRoots.of([tiny_images])
    entries = _entries(tiny_images, 6)
    entries[0] = {"item_id": "inline", "image": (tiny_images / "1164.jpg").read_bytes()}
    policy = jobs.JobPolicy(chunk_size=4, ttl_seconds=3)
    queued: list[int] = []
    job_id = jobs.submit(store, 1, entries, SIZE, lambda _j, c: queued.append(c), policy)
    keys = _job_keys(store, job_id)
    assert len(keys) >= 8 and all(0 < store.redis.ttl(k) <= 3 for k in keys)
    for chunk in queued:
        jobs.encode_chunk(store, _encode_fn(encoder), job_id, chunk, roots)
    assert jobs.progress(store, job_id).state is jobs.JobState.SUCCEEDED
    keys = _job_keys(store, job_id)
    assert keys and all(0 < store.redis.ttl(k) <= 3 for k in keys)  # the finished job keeps it
    time.sleep(3.5)
    assert _job_keys(store, job_id) == []
    assert jobs.progress(store, job_id) is None
    assert store.item_count(1) == 6
    assert all(store.redis.ttl(k) == -1 for k in store.redis.scan_iter(match="atelier:gen:*"))


def test_inline_bytes_go_as_soon_as_their_item_is_recorded(store, encoder, tiny_images):
    good = (tiny_images / "1164.jpg").read_bytes()
    entries = [
        jobs.normalise_entry("good", {}, "", good),
        jobs.normalise_entry("bad", {}, "", b"not an image"),
        jobs.normalise_entry("later", {}, "", good),
    ]
    policy = jobs.JobPolicy(chunk_size=2)
    job_id = jobs.submit(store, 1, entries, SIZE, lambda *_: None, policy)
    entry = f"atelier:job:{job_id}:entry:"
    assert all(store.redis.hexists(entry + i, "image") for i in ("good", "bad", "later"))
    jobs.encode_chunk(store, _encode_fn(encoder), job_id, 0, CatalogueRoots.of([tiny_images]))
    assert not store.redis.exists(entry + "good") and not store.redis.exists(entry + "bad")
    assert store.redis.hexists(entry + "later", "image")  # its chunk has not run
    progress = jobs.progress(store, job_id, max_failures=5)
    assert (progress.done, progress.failed) == (1, 1) and "not an image" in progress.failures["bad"]
    assert store.item(1, "good").metadata["image_ref"] == "inline"


def test_an_item_is_counted_once_whatever_order_outcomes_arrive_in(store, encoder, tiny_images):
    """Two deliveries of overlapping chunks record outcomes concurrently: each item ends up
    either done or failed, never both, and done + failed never exceeds the total."""
    entries = _entries(tiny_images, 40)
    job_id = jobs.create(store, 1, entries, SIZE, jobs.JobPolicy(chunk_size=40))
    code = encoder.encode(np.full((1, *SIZE, 3), 0.5, np.float32))
    ids = [e["item_id"] for e in entries]

    def deliver(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20):
            picked = rng.sample(ids, 8)
            records = [
                ItemRecord(i, code["mu"][0], code["sigma"][0], code["z"][0]) for i in picked[:4]
            ]
            store.record_chunk(job_id, 1, records, dict.fromkeys(picked[4:], f"seed {seed}"))

    threads = [threading.Thread(target=deliver, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = {v.decode() for v in store.redis.smembers(f"atelier:job:{job_id}:done")}
    failed = {k.decode() for k in store.redis.hkeys(f"atelier:job:{job_id}:failed")}
    assert done and not done & failed
    progress = jobs.progress(store, job_id)
    assert progress.done + progress.failed == len(done | failed) <= 40
    # A redelivered chunk's give-up after its items were written changes nothing.
    before = (progress.done, progress.failed)
    jobs.fail_chunk(store, job_id, 0, "gave up after retries")
    after = jobs.progress(store, job_id)
    assert (after.done, after.failed) == (before[0], 40 - before[0])
    assert after.state is jobs.JobState.SUCCEEDED


def test_a_job_whose_items_all_fail_is_failed(store, encoder, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    entries = [{"item_id": "a", "image_ref": str(tmp_path / "empty.jpg")}]
    entries.append({"item_id": "b", "image_ref": "/etc/passwd"})
    job_id = jobs.submit(store, 1, entries, SIZE, lambda *_: None)
    jobs.encode_chunk(store, _encode_fn(encoder), job_id, 0, CatalogueRoots.of([tmp_path]))
    progress = jobs.progress(store, job_id, max_failures=5)
    assert progress.state is jobs.JobState.FAILED and progress.reason
    assert "outside the catalogue roots" in progress.failures["b"]
    assert "root:" not in progress.failures["b"]


def test_a_queue_that_refuses_fails_what_it_did_not_take(store, tiny_images):
    taken: list[int] = []

    def flaky(_job: str, chunk: int) -> None:
        if len(taken) == 2:
            raise ConnectionError("broker down")
        taken.append(chunk)

    policy = jobs.JobPolicy(chunk_size=2, max_queued_chunks=8)
    with pytest.raises(jobs.QueueUnavailable) as error:
        jobs.submit(store, 1, _entries(tiny_images, 10), SIZE, flaky, policy)
    job_id = error.value.job_id
    progress = jobs.progress(store, job_id, max_failures=20)
    assert taken == [0, 1] and progress.failed == 6 and progress.state is jobs.JobState.RUNNING
    assert all(r.startswith("not queued") for r in progress.failures.values())
    # Nothing is left to queue, but the job stays active until its two queued chunks finish
    # (jobs.requeue_lost queues them again if the queue lost them).
    assert jobs.pump(store, job_id, flaky, window=8) == 0 and taken == [0, 1]
    assert job_id in {v.decode() for v in store.redis.smembers(ACTIVE_JOBS)}

    def refuse(*_):
        raise ConnectionError("broker down")

    with pytest.raises(jobs.QueueUnavailable) as error:
        jobs.submit(store, 1, _entries(tiny_images, 5), SIZE, refuse, policy)
    refused = jobs.progress(store, error.value.job_id)
    assert refused.state is jobs.JobState.FAILED and refused.reason.startswith("not queued")


def test_the_queue_holds_at_most_a_window_of_a_job(store, encoder, tiny_images):
    queued: list[int] = []
    enqueue = lambda _job, chunk: queued.append(chunk)  # noqa: E731
    policy = jobs.JobPolicy(chunk_size=2, max_queued_chunks=3)
    job_id = jobs.submit(store, 1, _entries(tiny_images, 20), SIZE, enqueue, policy)
    assert queued == [0, 1, 2]
    assert jobs.pump(store, job_id, enqueue, 3) == 0  # the window is full
    roots = CatalogueRoots.of([tiny_images])
    while queued:
        chunk = queued.pop(0)
        jobs.encode_chunk(store, _encode_fn(encoder), job_id, chunk, roots)
        jobs.pump(store, job_id, enqueue, 3)
        assert len(queued) <= 3
    progress = jobs.progress(store, job_id)
    assert (progress.done, progress.chunks, progress.queued_chunks) == (20, 10, 10)
    assert job_id not in {v.decode() for v in store.redis.smembers(ACTIVE_JOBS)}


def test_concurrent_pumps_neither_skip_nor_repeat_a_chunk(store, tiny_images):
    sent: list[int] = []
    lock = threading.Lock()

    def enqueue(_job: str, chunk: int) -> None:
        time.sleep(0.001)
        with lock:
            sent.append(chunk)

    job_id = jobs.create(store, 1, _entries(tiny_images, 200), SIZE, jobs.JobPolicy(chunk_size=2))
    threads = [
        threading.Thread(target=jobs.pump, args=(store, job_id, enqueue, 1000)) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sent) == list(range(100))


# --- with processes: the encoder, a worker and the model server ---


def _big_png(path: Path) -> None:
    """A 6000x6600 gradient: a small file whose decoding keeps a worker busy for a while."""
    ramp = np.linspace(0, 255, 6000, dtype=np.float32)
    pixels = np.broadcast_to(ramp[None, :, None], (6600, 6000, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path, "PNG", compress_level=1)


@pytest.fixture(scope="module")
def nan_models(tmp_path_factory, models_dir) -> Path:
    """The committed model as version 1, and as version 2 a model whose encoder outputs NaN."""
    target = tmp_path_factory.mktemp("models")
    committed = model_versions(models_dir)[-1]
    for name in ("atelier_encoder", "atelier_decoder"):
        shutil.copytree(models_dir / name / str(committed), target / name / "1")
    model = Autoencoder(ModelConfig())
    for weight in model.encoder.weights:
        weight.assign(np.full(weight.shape, np.nan, np.float32))
    export_model(model, target, version=2, data_hash="nan", epsilon_seed=2)
    return target


@pytest.fixture(scope="module")
def suite(tmp_path_factory, nan_models):
    work = tmp_path_factory.mktemp("jobs-suite")
    env = {
        "CATALOGUE_ROOTS": os.pathsep.join([str(tmp_path_factory.getbasetemp()), str(FIXTURES)]),
        "ENCODE_CHUNK_SIZE": "4",
        "MAX_QUEUED_CHUNKS_PER_JOB": "4",
        "MAX_CHUNK_DELIVERIES": "2",
        "JOB_RESUME_INTERVAL_SECONDS": "3600",  # only the startup scan and GetJob resume
        "QUEUE_VISIBILITY_TIMEOUT_SECONDS": "60",
    }
    with local_suite(work, nan_models, workers=1, extra_env=env) as running:
        yield running


@pytest.fixture(scope="module")
def stub(suite):
    channel = suite.channel("encoder")  # sends the suite's admin token
    yield encoder_pb2_grpc.EncoderServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def suite_store(suite, nan_models) -> CodeStore:
    """The suite's store, model version 1 registered (as SubmitCatalogue leaves it) for the jobs
    these tests create directly."""
    store = CodeStore.from_url(suite.env["REDIS_URL"])
    latent_dim = read_metadata(nan_models, 1).latent_dim
    jobs.ensure_model_registered(store, 1, SIZE, latent_dim, nan_models, encode=None)
    return store


def _wait(stub, job_id: str, timeout: float = 300.0) -> common_pb2.Job:
    finished = (
        common_pb2.JOB_STATE_SUCCEEDED,
        common_pb2.JOB_STATE_FAILED,
        common_pb2.JOB_STATE_CANCELLED,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job_id, max_failures=100), timeout=10)
        if job.state in finished:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish: {job}")


def _wait_in_redis(store: CodeStore, job_id: str, timeout: float = 300.0) -> jobs.JobProgress:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = jobs.progress(store, job_id)
        if progress.state in jobs.FINISHED:
            return progress
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish: {jobs.progress(store, job_id)}")


def test_a_non_finite_code_is_an_error_never_a_reply(stub, tiny_images):
    image = (tiny_images / "1164.jpg").read_bytes()
    with pytest.raises(grpc.RpcError) as error:
        stub.Encode(encoder_pb2.EncodeRequest(image=image, model_version=2), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "non-finite code" in error.value.details()
    entries = [
        encoder_pb2.CatalogueEntry(item=common_pb2.Item(item_id=f"n{i}"), image=image)
        for i in range(3)
    ]
    job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(
            entries=encoder_pb2.CatalogueEntries(entries=entries), model_version=2
        ),
        timeout=60,
    )
    job = _wait(stub, job.job_id)
    assert job.state == common_pb2.JOB_STATE_FAILED and job.failed == 3 and job.reason
    assert {f.reason for f in job.failures} == {jobs.NON_FINITE_CODE}


def test_an_encoder_that_died_mid_enqueue_resumes_its_jobs(suite, stub, suite_store, tiny_images):
    """Two jobs left by an encoder that died: one recorded but never queued, one whose first
    chunk reached the queue but not the high-water mark. The worker's top-up carries the second
    on; the restarted encoder's startup scan carries the first. Nothing is counted twice."""
    policy = jobs.JobPolicy(chunk_size=4, max_queued_chunks=4)
    never = jobs.create(suite_store, 1, _entries(tiny_images, 10, "never"), SIZE, policy)
    half = jobs.create(suite_store, 1, _entries(tiny_images, 10, "half"), SIZE, policy)
    broker = Celery(broker=suite.env["REDIS_URL"])
    broker.send_task("atelier.encode_chunk", args=(half, 0), queue="atelier.encode")
    assert _wait_in_redis(suite_store, half).state is jobs.JobState.SUCCEEDED
    time.sleep(1.0)
    stalled = jobs.progress(suite_store, never)
    assert stalled.state is jobs.JobState.QUEUED and stalled.queued_chunks == 0
    suite.processes["encoder"].stop()
    suite.start_service("encoder")
    resumed = _wait_in_redis(suite_store, never)
    for job_id in (never, half):
        progress = jobs.progress(suite_store, job_id)
        assert (progress.state, progress.done, progress.failed) == (
            jobs.JobState.SUCCEEDED,
            10,
            0,
        )
    assert resumed.items_per_second < 1000


def test_get_job_resumes_a_stalled_job(stub, suite_store, tiny_images):
    job_id = jobs.create(
        suite_store, 1, _entries(tiny_images, 6, "stalled"), SIZE, jobs.JobPolicy(chunk_size=4)
    )
    job = _wait(stub, job_id)
    assert (job.state, job.done) == (common_pb2.JOB_STATE_SUCCEEDED, 6)


def test_a_chunk_that_kills_its_worker_is_failed_after_the_cap(
    suite, stub, suite_store, tiny_images, tmp_path
):
    """Each delivery of chunk 0 has its worker process SIGKILLed; after MAX_CHUNK_DELIVERIES=2
    the next delivery fails its items with the reason and the job finishes."""
    for i in range(4):
        _big_png(tmp_path / f"big{i}.png")
    good = sorted(tiny_images.iterdir())[:4]
    rows = [f"poison{i},{tmp_path / f'big{i}.png'},Bags" for i in range(4)]
    rows += [f"fine{i},{p},Bags" for i, p in enumerate(good)]
    csv_path = tmp_path / "poison.csv"
    csv_path.write_text("id,image_path,category\n" + "\n".join(rows) + "\n")
    job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path), model_version=1), timeout=60
    )
    worker = suite.processes["worker1"]
    deliveries = f"atelier:job:{job.job_id}:deliveries"
    killed = 0
    deadline = time.monotonic() + 240
    while killed < 2 and time.monotonic() < deadline:
        seen = int(suite_store.redis.hget(deliveries, "0:0") or 0)
        children = _children(worker.pid)
        if seen > killed and children:
            for child in children:
                os.kill(child, signal.SIGKILL)
            killed += 1
        time.sleep(0.01)
    assert killed == 2
    finished = _wait(stub, job.job_id)
    failures = {f.item_id: f.reason for f in finished.failures}
    assert finished.state == common_pb2.JOB_STATE_SUCCEEDED
    assert (finished.done, finished.failed) == (4, 4)
    assert failures == {f"poison{i}": "chunk killed its worker 2 times" for i in range(4)}
    assert int(suite_store.redis.hget(deliveries, "0:0")) == 3
    assert worker.process.poll() is None  # the worker itself lives on


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(v) for v in handle.read().split()]
    except FileNotFoundError:
        return []


def test_job_ids_are_checked_before_they_become_keys(stub):
    for job_id in ("nope", "../../x", "*", "0" * 31 + "G", "0" * 32):
        with pytest.raises(grpc.RpcError) as error:
            stub.GetJob(encoder_pb2.GetJobRequest(job_id=job_id), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as error:
            stub.CancelJob(encoder_pb2.CancelJobRequest(job_id=job_id), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
