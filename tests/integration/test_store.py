"""The Redis layout against a real redis-server: packed codes, idempotent upserts, generations, jobs."""

from __future__ import annotations

import numpy as np
import pytest

from atelier import jobs
from atelier.catalogue import load_image_file
from atelier.confinement import CatalogueRoots
from atelier.modelstore import LoadedEncoder
from atelier.store import (
    BLOCK_ITEMS,
    GENERATION_CHANNEL,
    MODELS,
    CodeStore,
    ItemRecord,
    ModelRecord,
    pack_metadata,
    unpack_row,
)

pytestmark = pytest.mark.integration


EPSILON = np.ones(16, np.float32)  # so that z = μ + σ


def _record(item_id: str, seed: int) -> ItemRecord:
    rng = np.random.default_rng(seed)
    mu, sigma = rng.normal(size=16).astype(np.float32), rng.uniform(0.1, 1, 16).astype(np.float32)
    return ItemRecord(
        item_id, mu, sigma, mu + sigma, {"sub_category": "Bags", "article_type": "Handbags"}
    )


def _register(store: CodeStore, *versions: int) -> None:
    for version in versions:
        store.register_model(ModelRecord(version, 16, 80, 64, f"m{version}", EPSILON))


def test_codes_are_packed_float32_blocks_and_round_trip(store: CodeStore):
    record = _record("42", 0)
    with pytest.raises(KeyError, match="not registered"):
        store.upsert_codes(7, [record])  # z is derived with the model version's ε
    _register(store, 7)
    store.upsert_codes(7, [record])
    block = store.redis.get("atelier:gen:7:block:0")
    # Two planes (μ, σ) of BLOCK_ITEMS packed float32 vectors, allocated whole: μ of slot 0
    # comes first, and z = μ + σ⊙ε is not stored.
    assert len(block) == 2 * BLOCK_ITEMS * 16 * 4
    assert np.array_equal(np.frombuffer(block[: 16 * 4], "<f4"), record.mu)
    offset = BLOCK_ITEMS * 16 * 4
    assert np.array_equal(np.frombuffer(block[offset : offset + 16 * 4], "<f4"), record.sigma)
    # The slot map holds the slot and a fingerprint of the metadata, not the metadata again.
    slot, fingerprint = store.redis.hget("atelier:gen:7:slots", "42").split(b"\x1f")
    assert slot == b"0" and len(fingerprint) == 16
    loaded = store.item(7, "42")
    assert np.array_equal(loaded.mu, record.mu) and np.array_equal(loaded.sigma, record.sigma)
    assert np.array_equal(loaded.z, record.z)
    assert loaded.metadata["sub_category"] == "Bags"
    assert loaded.metadata["article_type"] == "Handbags" and loaded.metadata["gender"] == ""
    assert store.item(8, "42") is None


def test_first_layout_generations_migrate_to_blocks(store: CodeStore):
    """Codes written by the first versions: one hash per item (the very first held one
    `category` field: it is the subCategory)."""
    records = [_record(str(i), i) for i in range(5)]
    for record in records:
        store.redis.hset(
            f"atelier:gen:3:item:{record.item_id}",
            mapping={"mu": record.mu.tobytes(), "sigma": record.sigma.tobytes(),
                     "z": record.z.tobytes(), "category": "Eyewear", "article_type": "Sunglasses"},
        )  # fmt: skip
        store.redis.sadd("atelier:gen:3:items", record.item_id)
    _register(store, 3)
    assert store.migrate() == {3: 5}
    assert store.migrate() == {}  # nothing left in the first layout
    assert not list(store.redis.scan_iter(match="atelier:gen:3:item:*"))
    assert not store.redis.exists("atelier:gen:3:items")
    loaded = store.item(3, "4")
    assert loaded.metadata["sub_category"] == "Eyewear"
    assert np.array_equal(loaded.mu, records[4].mu) and np.array_equal(loaded.z, records[4].z)
    matrix = store.load_codes(3)
    assert sorted(matrix.item_ids) == ["0", "1", "2", "3", "4"]
    assert matrix.metadata.columns("sub_category")["sub_category"].tolist() == ["Eyewear"] * 5


def test_upserts_are_idempotent(store: CodeStore):
    _register(store, 1)
    records = [_record(str(i), i) for i in range(50)]
    for _ in range(3):
        store.upsert_codes(1, records)
    assert store.item_count(1) == 50
    assert int(store.redis.get("atelier:gen:1:next")) == 50  # no slot taken twice
    matrix = store.load_codes(1)
    order = {item_id: row for row, item_id in enumerate(matrix.item_ids)}
    assert np.array_equal(matrix.mu[order["7"]], records[7].mu)


def test_bulk_writes_and_loads_blocks_across_boundaries(store: CodeStore):
    count = BLOCK_ITEMS * 2 + 17
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(count, 16)).astype(np.float32)
    sigma = rng.uniform(0.1, 1, (count, 16)).astype(np.float32)
    ids = [f"i{n}" for n in range(count)]
    metadata = [{"sub_category": f"s{n % 3}", "gender": "Men"} for n in range(count)]
    _register(store, 4)
    store.write_generation(4, ids[:100], mu[:100], sigma[:100], mu[:100] + sigma[:100], metadata)
    # A re-run after a crash writes what is held again through the upsert: nothing is doubled.
    store.write_generation(4, ids, mu, sigma, mu + sigma, metadata, batch=1000)
    assert store.item_count(4) == count and int(store.redis.get("atelier:gen:4:next")) == count
    matrix = store.load_codes(4)
    assert matrix.item_ids == ids
    assert np.array_equal(matrix.mu, mu) and np.array_equal(matrix.sigma, sigma)
    assert np.array_equal(matrix.z, mu + sigma)
    columns = matrix.metadata.columns("sub_category", "gender")
    assert columns["sub_category"].tolist() == [m["sub_category"] for m in metadata]
    assert np.array_equal(store.item(4, "i8200").mu, mu[8200])
    even = store.load_codes(4, keep=lambda item_id: int(item_id[1:]) % 2 == 0)
    assert even.item_ids == ids[::2] and np.array_equal(even.sigma, sigma[::2])


def test_changed_metadata_takes_a_new_slot_and_deletes_stay_deleted(store: CodeStore):
    _register(store, 5)
    records = [_record(str(i), i) for i in range(10)]
    store.upsert_codes(5, records)
    moved = ItemRecord(
        "3", records[3].mu, records[3].sigma, records[3].z, {"sub_category": "Shoes"}
    )
    assert store.upsert_codes(5, [moved]) == 1
    assert store.delete_codes(5, ["4", "unknown"]) == 1
    assert store.delete_codes(5, ["4"]) == 0
    matrix = store.load_codes(5)
    assert matrix.item_ids == ["0", "1", "2", "5", "6", "7", "8", "9", "3"]
    assert matrix.metadata[-1]["sub_category"] == "Shoes"
    assert store.item(5, "4") is None and store.items_held(5, ["3", "4"]) == [True, False]
    assert store.upsert_codes(5, [records[4]]) == 1  # back, in a new slot
    assert store.load_codes(5).item_ids[-1] == "4"


def test_changes_to_the_served_generation_are_streamed_in_order(store: CodeStore):
    _register(store, 6)
    store.upsert_codes(6, [_record("a", 1)])  # not served yet: nobody to tell
    assert store.change_position(6) == 0
    store.serve(6)
    loaded = store.load_codes(6)
    store.upsert_codes(6, [_record("b", 2)])
    store.delete_codes(6, ["a"])
    batch = store.changes_after(6, *loaded.position)
    assert [(c.sequence, c.op, c.item_id) for c in batch.changes] == [(1, "u", "b"), (2, "d", "a")]
    mu, _, z = unpack_row(batch.changes[0].row)  # z derived, as everywhere
    assert np.array_equal(mu, _record("b", 2).mu) and np.array_equal(z, _record("b", 2).z)
    assert not batch.gap and batch.sequence == 2
    assert store.changes_after(6, batch.sequence, batch.stream_id).changes == []
    # A reader whose next change was trimmed away is told to reload, never skips silently.
    store.redis.xtrim("atelier:gen:6:changes", maxlen=1, approximate=False)
    assert store.changes_after(6, *loaded.position).gap


def test_serving_switch_is_atomic_and_announced(store: CodeStore):
    epsilon = np.ones(16, np.float32)
    with pytest.raises(KeyError):
        store.serve(1)
    store.register_model(ModelRecord(1, 16, 80, 64, "a", epsilon))
    store.register_model(ModelRecord(2, 16, 80, 64, "b", epsilon * 2))
    with pytest.raises(ValueError, match="no codes"):
        store.serve(1)
    store.upsert_codes(1, [_record("x", 1)])
    with pytest.raises(ValueError, match=r"μ \+ σ⊙ε"):  # a z that is not this version's
        store.upsert_codes(2, [_record("x", 2)])
    x = _record("x", 2)
    store.upsert_codes(2, [ItemRecord("x", x.mu, x.sigma, x.mu + 2 * x.sigma)])
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
    _register(store, 1, 2)
    store.upsert_codes(1, [_record("a", 1)])
    store.upsert_codes(2, [_record("a", 2)])
    store.serve(2)
    assert store.item(1, "a") is not None
    store.serve(1)
    with pytest.raises(ValueError, match="being served"):
        store.remove_generation(1)
    # The model record; the layout, the slot map, the live bitmap, the slot counter, the vector
    # width, the block and its ids and metadata.
    assert store.remove_generation(2) == 9
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
    store.register_model(ModelRecord(1, 64, 80, 64, "tiny", encoder.metadata.epsilon))
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


def test_separators_in_metadata_and_repeated_ids_never_misalign_a_generation(store: CodeStore):
    _register(store, 9, 10)
    record = _record("sep", 0)
    odd = ItemRecord(
        "sep", record.mu, record.sigma, record.z, {"name": "a\x1eb\nc", "gender": "Men"}
    )
    twice = [_record("dup", 1), _record("dup", 2)]
    assert store.upsert_codes(9, [odd, *twice]) == 2  # one slot each: the last "dup" wins
    loaded = store.item(9, "sep").metadata
    assert loaded["name"] == "a b c" and loaded["gender"] == "Men"
    assert np.array_equal(store.item(9, "dup").mu, twice[1].mu)
    assert store.load_codes(9).item_ids == ["sep", "dup"]
    with pytest.raises(ValueError, match="twice"):
        store.write_generation(10, ["x", "x"], *(np.zeros((2, 16), np.float32),) * 3)


def test_generations_in_the_first_block_layout_are_read_and_written_in_it(store: CodeStore):
    """Blocks written before the layout key (μ, σ and z stored, 4096 items per block, the
    metadata itself in the slot map) stay readable and writable in place."""
    _register(store, 12)
    store.redis.set("atelier:gen:12:layout", "3:4096")
    records = [_record(str(i), i) for i in range(5)]
    store.upsert_codes(12, records)
    store.redis.delete("atelier:gen:12:layout")  # as such a generation was written
    store.redis.hset("atelier:gen:12:slots", "2", "2\x1f" + pack_metadata(records[2].metadata))
    assert len(store.redis.get("atelier:gen:12:block:0")) == 3 * 4096 * 16 * 4
    again = ItemRecord("2", records[2].mu * 2, records[2].sigma, records[2].mu * 2 + records[2].sigma,
                       records[2].metadata)  # fmt: skip
    assert store.upsert_codes(12, [again]) == 0  # same metadata: rewritten in its slot
    loaded = store.load_codes(12)
    assert loaded.item_ids == ["0", "1", "2", "3", "4"]
    assert np.array_equal(loaded.z[2], again.z) and np.array_equal(store.item(12, "2").mu, again.mu)
    assert store.redis.get("atelier:gen:12:layout") == b"3:4096"
