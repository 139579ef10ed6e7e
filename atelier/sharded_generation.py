"""One shard of a generation, indexed under the whole generation's partitions.

Everything that decides where a query searches or how results are arranged is the whole
generation's, kept once per generation in Redis (the first writer wins, like the category
predictor and the k-means centres): the category names, each subCategory's masterCategory, the
partitions' mean codes (eq. 3's arithmetic) and sizes (the order of pairing lists). A shard holds
only its own items' codes and indexes (atelier.sharding.Shard), and answers a query by an item
another shard holds from that item's stored code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atelier import generation as generations
from atelier.clustering import Partition, by_labels, fit_kmeans, from_centres
from atelier.find import Query
from atelier.generation import KMEANS, MASTER, SPACES, SUB, UNKNOWN, Generation
from atelier.latent import RANKING_METHODS
from atelier.search import IndexOptions, query_space, spaces_read
from atelier.sharding import Shard
from atelier.store import CodeStore, ItemRecord

log = logging.getLogger(__name__)
SHARED_STATE = "shards:partitions:k={k}"


@dataclass(frozen=True)
class SharedPartitions:
    """The whole generation's partitions: names, centres per code space, sizes (μ-space labels)."""

    master_of: dict[str, str]
    names: dict[str, tuple[str, ...]]  # partitioning -> names
    centres: dict[str, dict[str, np.ndarray]]  # partitioning -> space -> (p, d) float32
    sizes: dict[str, np.ndarray]  # partitioning -> items per partition

    def to_json(self) -> str:
        return json.dumps(
            {
                "master_of": self.master_of,
                "names": {p: list(n) for p, n in self.names.items()},
                # float32 -> float -> JSON text round-trips exactly.
                "centres": {
                    p: {s: c.astype(float).tolist() for s, c in by_space.items()}
                    for p, by_space in self.centres.items()
                },
                "sizes": {p: s.tolist() for p, s in self.sizes.items()},
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SharedPartitions:
        data = json.loads(text)
        return cls(
            master_of=dict(data["master_of"]),
            names={p: tuple(n) for p, n in data["names"].items()},
            centres={
                p: {
                    s: np.asarray(c, np.float32).reshape(len(data["names"][p]), -1)
                    for s, c in by_space.items()
                }
                for p, by_space in data["centres"].items()
            },
            sizes={p: np.asarray(s, np.int64) for p, s in data["sizes"].items()},
        )


def _kmeans_centres(
    store: CodeStore, whole: Generation, k: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """The generation's k-means centres, fitted on every item by the first to need them."""
    centres = {}
    for space in SPACES:
        stored = store.partition_centres(whole.version, space, k)
        if stored is None:
            fitted = fit_kmeans(whole.codes.space(space), whole.codes.item_ids, k, seed)
            stored = store.save_partition_centres(whole.version, space, fitted.centres)
        centres[space] = stored
    return centres


def shared_partitions(store: CodeStore, version: int, k: int) -> SharedPartitions:
    """The generation's shared partition state, derived from every item on first use.

    The first shard to build a generation reads the whole generation once (as an unsharded node
    would) and also fits the category predictor and k-means centres on it; later shards and
    rebuilds read the result from Redis.
    """
    name = SHARED_STATE.format(k=k)
    stored = store.derived_state(version, name)
    if stored is None:
        whole = generations.build(store, version, searchable=False, vectors=SPACES)
        if k and len(whole.codes) < k:
            raise LookupError(
                f"generation {version} holds {len(whole.codes)} codes, fewer than k={k} clusters"
            )
        names = {SUB: whole.sub_names, MASTER: whole.master_names}
        cuts = {
            part: {
                s: by_labels(whole.codes.space(s), whole.attributes[part], names[part])
                for s in SPACES
            }
            for part in (SUB, MASTER)
        }
        if k:
            kmeans = _kmeans_centres(store, whole, k)
            cuts[KMEANS] = {s: from_centres(whole.codes.space(s), kmeans[s]) for s in SPACES}
            names[KMEANS] = cuts[KMEANS]["mu"].names
        shared = SharedPartitions(
            master_of=whole.master_of,
            names=names,
            centres={
                p: {s: cut.centres for s, cut in by_space.items()} for p, by_space in cuts.items()
            },
            sizes={
                p: np.bincount(by_space["mu"].labels, minlength=len(names[p]))
                for p, by_space in cuts.items()
            },
        )
        stored = store.save_derived_state(version, name, shared.to_json())
    return SharedPartitions.from_json(stored)


def named_partition(
    labels: np.ndarray, names: tuple[str, ...], centres: np.ndarray, vectors: np.ndarray
) -> Partition:
    """Items in the named partitions. An item whose label is not among them (a category the
    generation's partitions were derived without: a live update, or an item written since) is
    indexed in the partition with the nearest centre, so it is found, and nothing fails, until
    the partitions are derived again."""
    position = {name: index for index, name in enumerate(names)}
    index = np.array([position.get(label, -1) for label in labels.tolist()], dtype=np.int64)
    centres = np.asarray(centres, np.float32)
    strays = np.flatnonzero(index < 0)
    if len(strays):
        log.warning(
            "%d items have labels the partitions do not name (%s); indexed by nearest centre",
            len(strays),
            ", ".join(sorted(set(labels[strays].tolist()))[:5]),
        )
        index[strays] = Partition(centres, index, names).assign(vectors[strays])
    return Partition(centres, index, names)


def build_shard(
    store: CodeStore,
    version: int,
    shard: Shard,
    k: int = 0,
    shared: SharedPartitions | None = None,
    index_options: IndexOptions | None = None,
    methods: Sequence[str] = RANKING_METHODS,
) -> Generation:
    """One shard of a generation: its own items, indexed under the whole generation's partitions
    (every partition exists on every shard, empty where the shard holds none of its items)."""
    shared = shared or shared_partitions(store, version, k)
    local = generations.build(store, version, searchable=False, shard=shard)
    return index_under(local, shared, index_options, methods)


def index_under(
    local: Generation,
    shared: SharedPartitions,
    index_options: IndexOptions | None = None,
    methods: Sequence[str] = RANKING_METHODS,
) -> Generation:
    """Index a (non-searchable) generation's items under partitions decided elsewhere: the whole
    generation's, for a shard; the base's, for a replica's delta of live changes."""
    codes = local.codes
    masters = np.array(
        [shared.master_of.get(s, UNKNOWN) for s in local.attributes[SUB].tolist()], dtype=object
    ).astype(str)
    attributes = {**local.attributes, MASTER: masters}
    by_space = {
        part: {
            s: named_partition(
                attributes[part], shared.names[part], shared.centres[part][s], codes.space(s)
            )
            for s in SPACES
        }
        for part in (SUB, MASTER)
    }
    kmeans = (
        {s: from_centres(codes.space(s), shared.centres[KMEANS][s]) for s in SPACES}
        if KMEANS in shared.names
        else None
    )
    partitionings = generations.partitionings_over(
        codes,
        attributes,
        shared.master_of,
        by_space[SUB],
        by_space[MASTER],
        kmeans,
        index_options,
        methods,
    )
    return dataclasses.replace(
        local,
        codes=codes.keeping(spaces_read(methods)),
        attributes=attributes,
        master_of=shared.master_of,
        sub_names=shared.names[SUB],
        master_names=shared.names[MASTER],
        partitionings=partitionings,
    )


def frame_of(generation: Generation) -> SharedPartitions:
    """The partitions a searchable generation is indexed under, to index more items under."""
    names = {p: cut.names for p, cut in generation.partitionings.items()}
    return SharedPartitions(
        master_of=generation.master_of,
        names=names,
        centres={
            p: {s: cut.by_space[s].centres for s in SPACES}
            for p, cut in generation.partitionings.items()
        },
        sizes={
            p: np.bincount(cut.by_space["mu"].labels, minlength=len(cut.names))
            for p, cut in generation.partitionings.items()
        },
    )


def pairing_order(
    generation: Generation, partitioning: str, shared: SharedPartitions | None
) -> list[str]:
    """Every partition's name, largest first (ties in partition order): the order pairings are
    listed in. Sizes are the whole generation's (`shared`), or this generation's when unsharded."""
    cut = generation.partitionings[partitioning]
    if shared is None:
        sizes = np.bincount(cut.by_space["mu"].labels, minlength=len(cut.names))
    else:
        sizes = shared.sizes[partitioning]
    return [cut.names[p] for p in np.argsort(-sizes, kind="stable")]


def foreign_query(generation: Generation, record: ItemRecord, method: str) -> Query:
    """A query by a catalogue item another shard holds, read from the store: its code, and its
    category as the holder has it (its label, else predicted from its μ)."""
    space = query_space(method)
    vector = np.asarray(record.z if space == "z" else record.mu, dtype=np.float32)
    sub = record.metadata.get(SUB, "")
    if sub:
        category = generations.CategoryOf(sub, generation.master_of.get(sub, UNKNOWN), 1.0, True)
    else:
        category = generation.predict_category(np.asarray(record.mu, np.float32))
    return Query(vector.astype(np.float64), None, category, record.metadata.get("gender", ""))
