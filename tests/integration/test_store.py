"""The Redis layout against a real redis-server: packed codes, idempotent upserts, generations, jobs."""

from __future__ import annotations

import numpy as np
import pytest

from atelier import jobs
from atelier.catalogue import load_image_file
from atelier.confinement import CatalogueRoots
from atelier.modelstore import LoadedEncoder
from atelier.store import GENERATION_CHANNEL, MODELS, CodeStore, ItemRecord, ModelRecord

pytestmark = pytest.mark.integration


def _record(item_id: str, seed: int) -> ItemRecord:
    rng = np.random.default_rng(seed)
    mu, sigma = rng.normal(size=16).astype(np.float32), rng.uniform(0.1, 1, 16).astype(np.float32)
    return ItemRecord(
        item_id, mu, sigma, mu + sigma, {"sub_category": "Bags", "article_type": "Handbags"}
    )


def test_codes_are_packed_float32_and_round_trip(store: CodeStore):
    record = _record("42", 0)
    store.upsert_codes(7, [record])
    raw = store.redis.hget("atelier:gen:7:item:42", "mu")
    assert isinstance(raw, bytes) and len(raw) == 16 * 4  # packed float32, not JSON
    loaded = store.item(7, "42")
    assert np.array_equal(loaded.mu, record.mu) and np.array_equal(loaded.sigma, record.sigma)
    assert loaded.metadata["sub_category"] == "Bags"
    assert loaded.metadata["article_type"] == "Handbags" and loaded.metadata["gender"] == ""
    assert store.item(8, "42") is None


def test_first_version_records_keep_their_category(store: CodeStore):
    """Codes written by the first version held one `category` field: it is the subCategory."""
    record = _record("7", 0)
    store.redis.hset(
        "atelier:gen:3:item:7",
        mapping={"mu": record.mu.tobytes(), "sigma": record.sigma.tobytes(),
                 "z": record.z.tobytes(), "category": "Eyewear", "article_type": "Sunglasses"},
    )  # fmt: skip
    store.redis.sadd("atelier:gen:3:items", "7")
    (loaded,) = [store.item(3, "7")]
    assert loaded.metadata["sub_category"] == "Eyewear"
    assert store.load_codes(3).metadata[0]["sub_category"] == "Eyewear"


def test_upserts_are_idempotent(store: CodeStore):
    records = [_record(str(i), i) for i in range(50)]
    for _ in range(3):
        store.upsert_codes(1, records)
    assert store.item_count(1) == 50
    assert len(list(store.redis.scan_iter(match="atelier:gen:1:item:*"))) == 50
    matrix = store.load_codes(1)
    order = {item_id: row for row, item_id in enumerate(matrix.item_ids)}
    assert np.array_equal(matrix.mu[order["7"]], records[7].mu)


def test_serving_switch_is_atomic_and_announced(store: CodeStore):
    epsilon = np.ones(16, np.float32)
    with pytest.raises(KeyError):
        store.serve(1)
    store.register_model(ModelRecord(1, 16, 80, 64, "a", epsilon))
    store.register_model(ModelRecord(2, 16, 80, 64, "b", epsilon * 2))
    with pytest.raises(ValueError, match="no codes"):
        store.serve(1)
    store.upsert_codes(1, [_record("x", 1)])
    store.upsert_codes(2, [_record("x", 2)])
    pubsub = store.redis.pubsub()
    pubsub.subscribe(GENERATION_CHANNEL)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    store.serve(1)
    store.serve(2)
    announced = [pubsub.get_message(timeout=1)["data"] for _ in range(2)]
    assert announced == [b"1", b"2"]
    assert store.served_version() == 2
    assert np.array_equal(store.model(2).epsilon, epsilon * 2)
    assert store.model_versions() == [1, 2]


def test_old_generation_stays_until_removed(store: CodeStore):
    store.register_model(ModelRecord(1, 16, 80, 64, "a", np.zeros(16, np.float32)))
    store.register_model(ModelRecord(2, 16, 80, 64, "b", np.zeros(16, np.float32)))
    store.upsert_codes(1, [_record("a", 1)])
    store.upsert_codes(2, [_record("a", 2)])
    store.serve(2)
    assert store.item(1, "a") is not None
    store.serve(1)
    with pytest.raises(ValueError, match="being served"):
        store.remove_generation(1)
    assert store.remove_generation(2) == 3  # the model record, the item's hash, the items set
    assert store.model_versions() == [1]
    assert store.item(2, "a") is None and store.item(1, "a") is not None


def test_model_versions_come_from_their_set_and_older_stores_are_indexed_once(store: CodeStore):
    store.register_model(ModelRecord(3, 16, 80, 64, "c", np.zeros(16, np.float32)))
    store.register_model(ModelRecord(1, 16, 80, 64, "a", np.zeros(16, np.float32)))
    assert store.model_versions() == [1, 3]
    # A store written before the set existed: model hashes only.
    store.redis.delete(MODELS)
    store.redis.hset("atelier:model:7", mapping={"latent_dim": "16"})
    assert store.model_versions() == [1, 3, 7]
    assert store.redis.smembers(MODELS) == {b"1", b"3", b"7"}


def test_encode_chunk_records_bad_images_and_is_idempotent(
    store: CodeStore, models_dir, tiny_images, tmp_path
):
    encoder = LoadedEncoder(models_dir)
    good = sorted(tiny_images.iterdir())[:3]
    (tmp_path / "empty.jpg").write_bytes(b"")
    entries = [{"item_id": p.stem, "image_ref": str(p), "sub_category": "X"} for p in good]
    entries += [
        {"item_id": "empty", "image_ref": str(tmp_path / "empty.jpg")},
        {"item_id": "gone", "image_ref": str(tmp_path / "nope.jpg")},
        {"item_id": "inline", "image": good[0].read_bytes(), "sub_category": "Y"},
    ]
    roots = CatalogueRoots.of([tiny_images.parent, tmp_path])
    queued: list[int] = []
    job_id = jobs.submit(
        store,
        1,
        entries,
        (80, 64),
        lambda _job, chunk: queued.append(chunk),
        jobs.JobPolicy(chunk_size=4),
    )
    assert queued == [0, 1]

    def encode(images, _version):
        return encoder.encode(images)

    for _ in range(2):  # a redelivered chunk changes nothing
        for chunk in queued:
            jobs.encode_chunk(store, encode, job_id, chunk, roots)
    progress = jobs.progress(store, job_id, max_failures=10)
    assert progress.state is jobs.JobState.SUCCEEDED
    assert (progress.total, progress.done, progress.failed) == (6, 4, 2)
    assert "empty" in progress.failures["empty"] and "missing" in progress.failures["gone"]
    assert store.item_count(1) == 4
    expected = encoder.encode(load_image_file(good[0])[None])
    assert np.allclose(store.item(1, "inline").mu, expected["mu"][0], atol=1e-5)
    assert store.item(1, "inline").metadata["image_ref"] == "inline"


def test_submit_rejects_duplicate_or_missing_ids(store: CodeStore):
    with pytest.raises(ValueError, match="twice"):
        jobs.submit(store, 1, [{"item_id": "a"}, {"item_id": "a"}], (80, 64), lambda *_: None)
    with pytest.raises(ValueError, match="non-empty"):
        jobs.submit(store, 1, [{"item_id": ""}], (80, 64), lambda *_: None)
    with pytest.raises(ValueError, match="at least one"):
        jobs.submit(store, 1, [], (80, 64), lambda *_: None)
