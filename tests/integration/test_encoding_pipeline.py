"""The encoding backbone end to end: model server, EncoderService, Celery workers and Redis, all real."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from atelier.catalogue import decode_image
from atelier.modelstore import LoadedEncoder
from atelier.store import GENERATION_CHANNEL, CodeStore
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fashion-product-tiny"


@pytest.fixture(scope="module")
def stub(encoding_suite):
    channel = encoding_suite.channel("encoder")
    yield encoder_pb2_grpc.EncoderServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def code_store(encoding_suite) -> CodeStore:
    return CodeStore.from_url(encoding_suite.env["REDIS_URL"])


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _wait(stub, job_id: str, timeout: float = 240.0) -> common_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job_id, max_failures=100), timeout=5)
        if job.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_CANCELLED):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish: {job}")


def test_health_and_reflection(encoding_suite):
    with encoding_suite.channel("encoder") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="atelier.v1.EncoderService"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(
            reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([request]), timeout=5
            )
        )
        names = {s.name for s in response.list_services_response.service}
        assert {"atelier.v1.EncoderService", "grpc.health.v1.Health"} <= names


def test_encode_matches_the_in_process_model(stub, two_version_models, tiny_images):
    data = (tiny_images / "1164.jpg").read_bytes()
    reply = stub.Encode(encoder_pb2.EncodeRequest(image=data, model_version=1), timeout=10)
    expected = LoadedEncoder(two_version_models, 1).encode(decode_image(data)[None])
    assert reply.model_version == 1
    np.testing.assert_allclose(reply.code.mu, expected["mu"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reply.code.z, expected["z"][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 not an image", "not an image"),
        ((FIXTURE / "images" / "1164.jpg").read_bytes()[:900], "corrupt or truncated"),
    ],
)
def test_encode_rejects_bad_images_with_the_reason(stub, payload, reason):
    with pytest.raises(grpc.RpcError) as error:
        stub.Encode(encoder_pb2.EncodeRequest(image=payload), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in error.value.details()


def test_unknown_model_version_is_not_found(stub, tiny_images):
    data = (tiny_images / "1164.jpg").read_bytes()
    with pytest.raises(grpc.RpcError) as error:
        stub.Encode(encoder_pb2.EncodeRequest(image=data, model_version=99), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        stub.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(csv_path="/nowhere.csv", model_version=99),
            timeout=10,
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        stub.GetJob(encoder_pb2.GetJobRequest(job_id="nope"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_items_are_reported_per_item_and_lose_nothing_else(
    stub, code_store, tiny_images, tmp_path
):
    good = sorted(tiny_images.iterdir())[:5]
    jpeg = good[0].read_bytes()
    gray = Image.open(good[1]).convert("L")
    rgba = Image.open(good[2]).convert("RGBA")
    huge = io.BytesIO()
    Image.new("L", (10_000, 10_000), 128).save(huge, "PNG")
    (tmp_path / "zero.jpg").write_bytes(b"")
    cases = {
        "truncated": {"image": jpeg[: len(jpeg) // 3]},
        "alpha-png": {"image": _png(rgba)},
        "grayscale": {"image": _png(gray)},
        "zero-byte": {"image_ref": str(tmp_path / "zero.jpg")},
        "huge": {"image": huge.getvalue()},
        "not-image": {"image": b"GIF87a? no, just text"},
        "missing-file": {"image_ref": str(tmp_path / "missing.jpg")},
    }
    entries = [
        encoder_pb2.CatalogueEntry(
            item=common_pb2.Item(item_id=f"ok-{p.stem}", category="Footwear", image_ref=str(p))
        )
        for p in good
    ]
    for item_id, source in cases.items():
        entries.append(
            encoder_pb2.CatalogueEntry(
                item=common_pb2.Item(
                    item_id=item_id, category="Test", image_ref=source.get("image_ref", "")
                ),
                image=source.get("image", b""),
            )
        )
    job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(
            entries=encoder_pb2.CatalogueEntries(entries=entries), model_version=1
        ),
        timeout=30,
    )
    job = _wait(stub, job.job_id)
    failures = {f.item_id: f.reason for f in job.failures}
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED
    assert (job.total, job.done, job.failed) == (12, 7, 5)
    assert set(failures) == {"truncated", "zero-byte", "huge", "not-image", "missing-file"}
    assert "truncated" in failures["truncated"] and "empty" in failures["zero-byte"]
    assert "too large" in failures["huge"] and "not an image" in failures["not-image"]
    assert "missing" in failures["missing-file"]
    for item_id in ["alpha-png", "grayscale", *[f"ok-{p.stem}" for p in good]]:
        assert code_store.item(1, item_id) is not None, item_id
    for item_id in failures:
        assert code_store.item(1, item_id) is None


def test_killed_worker_loses_and_duplicates_nothing(
    encoding_suite, stub, code_store, tiny_images, tmp_path
):
    images = sorted(tiny_images.iterdir())
    rows = ["id,image_path,category"] + [
        f"k{i},{images[i % len(images)]},Footwear" for i in range(3000)
    ]
    csv_path = tmp_path / "catalogue.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path), model_version=2), timeout=60
    )
    victim = encoding_suite.processes["worker1"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job.job_id), timeout=5).done
        if done >= 300:
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)  # the whole worker, prefork children orphaned mid-task
    for child in _children(victim.pid):
        os.kill(child, signal.SIGKILL)
    victim.process.wait(timeout=10)
    finished = _wait(stub, job.job_id, timeout=300)
    assert finished.state == common_pb2.JOB_STATE_SUCCEEDED
    assert (finished.done, finished.failed) == (3000, 0)
    # Every item holds one slot: a chunk retried after the kill rewrote its items in place.
    assert code_store.item_count(2) == int(code_store.redis.get("atelier:gen:2:next")) == 3000
    assert set(code_store.item_ids(2)) == {f"k{i}" for i in range(3000)}
    encoding_suite.start_worker("worker1b")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(v) for v in handle.read().split()]
    except FileNotFoundError:
        return []


def test_generation_rollout_readers_see_a_then_b_never_a_mix(
    stub, code_store, two_version_models, tiny_images, tmp_path
):
    images = sorted(tiny_images.iterdir())[:40]
    rows = ["id,image_path,category"] + [f"{p.stem},{p},Footwear" for p in images]
    csv_path = tmp_path / "rollout.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    ids = [p.stem for p in images]
    pixels = np.stack([decode_image(p.read_bytes()) for p in images])
    expected = {v: LoadedEncoder(two_version_models, v).encode(pixels)["mu"] for v in (1, 2)}

    job_a = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path), model_version=1), timeout=30
    )
    assert _wait(stub, job_a.job_id).done == 40
    code_store.serve(1)

    pubsub = code_store.redis.pubsub()
    pubsub.subscribe(GENERATION_CHANNEL)
    seen: list[int] = []
    mixed: list[str] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            version = code_store.served_version()
            matrix = code_store.load_codes(version)
            rows_by_id = dict(zip(matrix.item_ids, matrix.mu, strict=True))
            for index, item_id in enumerate(ids):
                got = rows_by_id.get(item_id)
                if got is None or not np.allclose(got, expected[version][index], atol=1e-4):
                    mixed.append(f"{item_id} under {version}")
            seen.append(version)

    thread = threading.Thread(target=reader)
    thread.start()
    job_b = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path), model_version=2), timeout=30
    )
    assert _wait(stub, job_b.job_id).done == 40
    time.sleep(0.3)
    code_store.serve(2)
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=30)
    assert not mixed, mixed[:5]
    assert seen[0] == 1 and seen[-1] == 2
    assert seen == sorted(seen), "a reader saw B, then A again"
    messages = [pubsub.get_message(timeout=1) for _ in range(2)]
    assert [m["data"] for m in messages if m and m["type"] == "message"] == [b"2"]
    assert code_store.item(1, ids[0]) is not None  # A stays until removed explicitly


def test_cancel_stops_a_job(stub, tiny_images, tmp_path):
    images = sorted(tiny_images.iterdir())
    rows = ["id,image_path,category"] + [
        f"c{i},{images[i % len(images)]},Bags" for i in range(4000)
    ]
    csv_path = tmp_path / "cancel.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path), model_version=1), timeout=60
    )
    cancelled = stub.CancelJob(encoder_pb2.CancelJobRequest(job_id=job.job_id), timeout=5)
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    time.sleep(2)
    later = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job.job_id), timeout=5)
    assert later.state == common_pb2.JOB_STATE_CANCELLED and later.done + later.failed < 4000


def test_model_server_speaks_tensorflow_serving_errors(encoding_suite):
    from atelier.tfserving.tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )
    from services.common.model_client import ModelClient, to_tensor_proto

    client = ModelClient(encoding_suite.env["MODEL_SERVER_ADDR"])
    shape = client.shape()
    assert (shape.image_height, shape.image_width, shape.latent_dim, shape.version) == (
        80,
        64,
        16,
        2,
    )
    stub = prediction_service_pb2_grpc.PredictionServiceStub(client.channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "atelier_encoder"
    request.model_spec.signature_name = "encode"
    request.inputs["images"].CopyFrom(to_tensor_proto(np.zeros((1, 80, 60, 3), np.float32)))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=10)
    assert (
        error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in error.value.details()
    )
    request.model_spec.name = "no_such_model"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "atelier_decoder"
    metadata.model_spec.version.value = 7
    metadata.metadata_field.append("signature_def")
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelMetadata(metadata, timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    committed_dim = client.shape(1).latent_dim  # version 1 here is a copy of the committed model
    images, version = client.decode(np.zeros((2, committed_dim), np.float32), version=1)
    assert images.shape == (2, 80, 64, 3) and version == 1
    client.close()
