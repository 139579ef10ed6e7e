"""Everything a query needs about one generation of codes, built from Redis: codes, categories,
partitions and indexes.

Every item has a subCategory: the catalogue's label where it has one, else the one predicted from
its code (atelier.categories). Searches run over one exact FAISS index per subCategory; a
masterCategory is the union of its subCategories, and the whole catalogue the union of all. The
k-means clusters (when KMEANS_K > 0) have their own index.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from atelier.categories import MAX_FIT_ITEMS, CategoryPredictor
from atelier.clustering import (
    Partition,
    by_labels,
    fit_kmeans,
    from_centres,
    label_codes,
    label_names,
)
from atelier.latent import RANKING_METHODS
from atelier.search import (
    LIST_SPACES,
    CodeSet,
    IndexOptions,
    SearchIndex,
    TrainedLists,
    Where,
    spaces_read,
)
from atelier.sharding import Shard
from atelier.store import PLANES, CodeMatrix, CodeStore, Metadata

log = logging.getLogger(__name__)
SPACES = ("mu", "z")
SUB, MASTER, KMEANS = "sub_category", "master_category", "kmeans"
PREDICTOR_STATE = "categories:sub_category"
UNKNOWN = "Unknown"  # the subCategory of items with no label when nothing can be predicted


@dataclass(frozen=True)
class Partitioning:
    """One way of cutting the catalogue: subCategories, masterCategories or k-means clusters.

    Partition p of this partitioning is answered by searching `members[p]`, a list of the
    index's own partitions.
    """

    name: str
    by_space: dict[str, Partition]  # names, centres and each item's partition, per code space
    index: SearchIndex
    members: list[list[int]]

    @property
    def names(self) -> tuple[str, ...]:
        return self.by_space["mu"].names

    def position(self, name: str) -> int | None:
        try:
            return self.names.index(name)
        except ValueError:
            return None


@dataclass(frozen=True)
class CategoryOf:
    sub_category: str
    master_category: str
    confidence: float
    from_label: bool


@dataclass(frozen=True)
class Generation:
    version: int
    codes: CodeSet
    metadata: Metadata
    row_of: dict[str, int]
    attributes: dict[str, np.ndarray]  # per row: sub_category, master_category, gender, ...
    from_label: np.ndarray  # per row: is the subCategory the catalogue's label?
    confidence: np.ndarray  # per row: 1 for labels, the prediction's probability otherwise
    predictor: CategoryPredictor | None
    master_of: dict[str, str]
    sub_names: tuple[str, ...]
    master_names: tuple[str, ...]
    partitionings: dict[str, Partitioning]
    lower: np.ndarray  # per-dimension slider bounds from the catalogue's μ
    upper: np.ndarray
    position: tuple[int, str] = (0, "0-0")  # the last change of the store it includes
    _slider_cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def latent_dim(self) -> int:
        return int(self.lower.shape[0])

    def category_of_row(self, row: int) -> CategoryOf:
        return CategoryOf(
            str(self.attributes[SUB][row]),
            str(self.attributes[MASTER][row]),
            float(self.confidence[row]),
            bool(self.from_label[row]),
        )

    def predict_category(self, vector: np.ndarray) -> CategoryOf:
        """The category of a code with no label (a photo, a slider position)."""
        if self.predictor is None:
            return CategoryOf(UNKNOWN, UNKNOWN, 0.0, False)
        prediction = self.predictor.predict(np.asarray(vector)[None])
        sub = str(prediction.labels[0])
        return CategoryOf(
            sub, self.master_of.get(sub, UNKNOWN), float(prediction.confidence[0]), False
        )

    def category_where(self, name: str) -> Where:
        """The filter for a named category: a subCategory or a masterCategory."""
        if name in self.sub_names:
            return ((SUB, (name,)),)
        if name in self.master_names:
            return ((MASTER, (name,)),)
        raise LookupError(
            f"unknown category {name!r}; the catalogue has subCategories "
            f"{', '.join(self.sub_names)} and masterCategories {', '.join(self.master_names)}"
        )

    def rows_of_category(self, name: str) -> np.ndarray:
        ((attribute, values),) = self.category_where(name)
        return np.flatnonzero(self.attributes[attribute] == values[0])

    def category_counts(self) -> list[tuple[str, str, int]]:
        """(subCategory, masterCategory, items) for every subCategory, largest first."""
        names = self.sub_names
        try:
            codes = label_codes(self.attributes[SUB], names)
        except ValueError:  # a shard's or delta's labels may reach past the shared names
            names = label_names(self.attributes[SUB])
            codes = label_codes(self.attributes[SUB], names)
        counts = np.bincount(codes, minlength=len(names))
        pairs = [
            (s, self.master_of.get(s, UNKNOWN), int(n))
            for s, n in zip(names, counts, strict=True)
            if n
        ]
        return sorted(pairs, key=lambda p: (-p[2], p[0]))

    def slider_state(self, key: str, build):
        """A per-generation cache for the decoder's slider bases (derived, never stored)."""
        if key not in self._slider_cache:
            self._slider_cache[key] = build()
        return self._slider_cache[key]


def _category_predictor(
    store: CodeStore, version: int, mu: np.ndarray, subs: np.ndarray, labelled: np.ndarray
) -> CategoryPredictor | None:
    stored = store.derived_state(version, PREDICTOR_STATE)
    if stored is None:
        if len(set(subs[labelled].tolist())) < 2:
            return None
        started = time.perf_counter()
        rows = np.flatnonzero(labelled)
        if len(rows) > MAX_FIT_ITEMS:  # sample first: never a float64 copy of millions of codes
            rows = np.sort(np.random.default_rng(0).choice(rows, MAX_FIT_ITEMS, replace=False))
        fitted = CategoryPredictor.fit(mu[rows], subs[rows])
        log.info(
            "generation %d: category predictor fitted on %d labelled items in %.1fs",
            version,
            int(labelled.sum()),
            time.perf_counter() - started,
        )
        stored = store.save_derived_state(version, PREDICTOR_STATE, fitted.to_json())
    return CategoryPredictor.from_json(stored)


def _sublists_state(partitioning: str, space: str, options: IndexOptions) -> str:
    return (
        f"sublists2:{partitioning}:{space}:{options.lists_factor}:{options.min_list_size}:"
        f"{options.points_per_list}:{options.niter}:{options.seed}"
    )


def _stored_sublists(
    store: CodeStore, version: int, options: IndexOptions | None
) -> dict[str, TrainedLists] | None:
    """IVF sublist centroids an earlier replica trained for this generation (k-means per
    partition is most of an IVF build: a replica that finds them only assigns its items)."""
    if options is None or options.kind != "ivf":
        return None
    found: dict[str, TrainedLists] = {}
    for partitioning in (SUB, KMEANS):
        for space in LIST_SPACES:
            raw = store.derived_state(version, _sublists_state(partitioning, space, options))
            if raw is not None:
                with np.load(io.BytesIO(raw)) as saved:
                    lists = (
                        tuple(saved["names"].tolist()),
                        saved["per_partition"],
                        saved["centroids"],
                    )
                found.setdefault(partitioning, {})[space] = lists
    return found


def _save_sublists(
    store: CodeStore,
    generation: Generation,
    options: IndexOptions | None,
    stored: dict[str, TrainedLists] | None,
) -> None:
    if options is None or options.kind != "ivf":
        return
    for name in (SUB, KMEANS):
        if name not in generation.partitionings:
            continue
        index = generation.partitionings[name].index
        for space, (names, per_partition, centroids) in index.trained_lists().items():
            # Replaced when this build trained some partition again (its size or the partitions
            # changed since): later replicas then reuse the lists that match the data.
            if space in (stored or {}).get(name, {}) and not index.retrained:
                continue
            buffer = io.BytesIO()
            np.savez(
                buffer,
                names=np.array(names, dtype=str),
                per_partition=per_partition,
                centroids=centroids,
            )
            store.save_derived_state(
                generation.version,
                _sublists_state(name, space, options),
                buffer.getvalue(),
                replace=index.retrained,
            )


@dataclass(frozen=True)
class Categories:
    subs: np.ndarray  # every item's subCategory: its label, else predicted
    masters: np.ndarray  # every item's masterCategory, the one its subCategory belongs to
    from_label: np.ndarray
    confidence: np.ndarray
    master_of: dict[str, str]
    # The distinct subCategories and masterCategories, sorted, and each item's position in them.
    sub_names: tuple[str, ...] = ()
    sub_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    master_names: tuple[str, ...] = ()
    master_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def labels(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        return {
            SUB: (self.sub_names, self.sub_codes),
            MASTER: (self.master_names, self.master_codes),
        }


def categorise(
    mu: np.ndarray,
    subs: np.ndarray,
    masters: np.ndarray,
    predictor: CategoryPredictor | None,
) -> Categories:
    """Labels where the catalogue has them, predictions from the code elsewhere. A subCategory's
    masterCategory is the one most of its labelled items name, so masterCategories are unions of
    subCategories."""
    subs = np.asarray(subs).astype(str, copy=False)
    labelled = subs != ""
    confidence = np.ones(len(subs))
    if (~labelled).any():
        filled = subs.astype(object)
        if predictor is None:
            filled[~labelled] = UNKNOWN
            confidence[~labelled] = 0.0
        else:
            prediction = predictor.predict(np.asarray(mu)[~labelled])
            filled[~labelled] = prediction.labels
            confidence[~labelled] = prediction.confidence
        subs = filled.astype(str)
    # Each subCategory's masterCategory: the most votes, ties to the first named (vectorised:
    # a Python loop over ten million items takes seconds).
    masters = np.asarray(masters).astype(str, copy=False)
    sub_names = np.array(label_names(subs), dtype=str)
    sub_of_row = label_codes(subs, sub_names)
    master_names = np.array(label_names(masters), dtype=str)
    master_of_row = label_codes(masters, master_names)
    voting = labelled & (masters != "")
    keys = sub_of_row[voting].astype(np.int64) * len(master_names) + master_of_row[voting]
    unique_keys, first, counts = np.unique(keys, return_index=True, return_counts=True)
    best: dict[str, tuple[int, int, str]] = {}
    for key, seen, count in zip(unique_keys.tolist(), first.tolist(), counts.tolist(), strict=True):
        sub = str(sub_names[key // len(master_names)])
        if sub not in best or (-count, seen) < best[sub][:2]:
            best[sub] = (-count, seen, str(master_names[key % len(master_names)]))
    master_of = {sub: master for sub, (_, _, master) in best.items()}
    master_of_sub = [master_of.get(s, UNKNOWN) for s in sub_names.tolist()]
    final_masters = tuple(sorted(set(master_of_sub)))
    master_codes = np.array([final_masters.index(m) for m in master_of_sub], np.int64)[sub_of_row]
    masters = np.array(final_masters, dtype=str)[master_codes]
    return Categories(
        subs,
        masters,
        labelled,
        confidence,
        master_of,
        tuple(sub_names.tolist()),
        sub_of_row,
        final_masters,
        master_codes,
    )


def index_partitions(
    codes: CodeSet,
    attributes: dict[str, np.ndarray],
    master_of: dict[str, str],
    kmeans: dict[str, Partition] | None = None,
    index_options: IndexOptions | None = None,
    methods: Sequence[str] = RANKING_METHODS,
    trained: dict[str, TrainedLists] | None = None,
    labels: dict[str, tuple[tuple[str, ...], np.ndarray]] | None = None,
) -> dict[str, Partitioning]:
    """The subCategory and masterCategory partitionings over one index whose partitions are the
    subCategories, and the k-means partitioning over its own index when centres are given.
    `index_options` says how each index is laid out (flat, or IVF sublists per partition).
    `labels`: per attribute, its names and each item's position in them (`Categories.labels`),
    when known."""
    labels = dict(labels or {})
    for attribute in (SUB, MASTER):
        if attribute not in labels:
            names = label_names(attributes[attribute])
            labels[attribute] = (names, label_codes(attributes[attribute], names))
    by_sub, by_master = (
        {s: by_labels(codes.space(s), (), *labels[attribute]) for s in SPACES}
        for attribute in (SUB, MASTER)
    )
    return partitionings_over(
        codes, attributes, master_of, by_sub, by_master, kmeans, index_options, methods, trained
    )


def partitionings_over(
    codes: CodeSet,
    attributes: dict[str, np.ndarray],
    master_of: dict[str, str],
    by_sub: dict[str, Partition],
    by_master: dict[str, Partition],
    kmeans: dict[str, Partition] | None = None,
    index_options: IndexOptions | None = None,
    methods: Sequence[str] = RANKING_METHODS,
    trained: dict[str, TrainedLists] | None = None,
) -> dict[str, Partitioning]:
    """The partitionings over given partitions (per code space): subCategories and
    masterCategories share one index whose partitions are the subCategories; k-means clusters,
    when given, have their own. `trained`: sublists per index (SUB, KMEANS) to reuse."""
    sub_names = by_sub["mu"].names
    trained = trained or {}
    category_index = SearchIndex(
        codes, by_sub, attributes, methods, options=index_options, trained=trained.get(SUB)
    )
    partitionings = {
        SUB: Partitioning(SUB, by_sub, category_index, [[i] for i in range(len(sub_names))]),
        MASTER: Partitioning(
            MASTER,
            by_master,
            category_index,
            [
                [i for i, sub in enumerate(sub_names) if master_of.get(sub, UNKNOWN) == master]
                for master in by_master["mu"].names
            ],
        ),
    }
    if kmeans:
        count = len(kmeans["mu"].centres)
        kmeans_index = SearchIndex(
            codes, kmeans, attributes, methods, options=index_options, trained=trained.get(KMEANS)
        )
        partitionings[KMEANS] = Partitioning(
            KMEANS, kmeans, kmeans_index, [[i] for i in range(count)]
        )
    return partitionings


def build(
    store: CodeStore,
    version: int,
    k: int = 0,
    seed: int = 0,
    searchable: bool = True,
    index_options: IndexOptions | None = None,
    shard: Shard | None = None,
    methods: Sequence[str] = RANKING_METHODS,
    vectors: Sequence[str] | None = None,
) -> Generation:
    """Load a generation from Redis (only `shard`'s items) and index it for `methods`. Derived
    state (the category predictor, k-means centres) is computed once per generation and kept in
    Redis, so replicas and shards agree. Only the code `vectors` named are read; by default,
    when searchable, μ and z (partition centres are kept in both spaces) and σ where the methods
    score with it, and all three otherwise."""
    started = time.perf_counter()
    if vectors is None:
        wanted = {"mu", *SPACES, *spaces_read(methods)} if searchable else set(PLANES)
        vectors = [plane for plane in PLANES if plane in wanted]
    matrix = store.load_codes(version, keep=shard.owns if shard else None, vectors=vectors)
    if not matrix.item_ids:
        raise LookupError(f"generation {version} holds no codes")
    if searchable and k and len(matrix.item_ids) < k:
        raise LookupError(
            f"generation {version} holds {len(matrix.item_ids)} codes, fewer than k={k} clusters"
        )
    columns = matrix.metadata.columns(SUB, MASTER, "gender")
    subs = columns[SUB]
    predictor = _category_predictor(store, version, matrix.mu, subs, subs != "")
    kmeans_centres = None
    if searchable and k:
        kmeans_centres = {}
        for space in SPACES:
            stored = store.partition_centres(version, space, k)
            if stored is None:
                vectors = matrix.z if space == "z" else matrix.mu
                fitted = fit_kmeans(vectors, matrix.item_ids, k, seed)
                stored = store.save_partition_centres(version, space, fitted.centres)
            kmeans_centres[space] = stored
    trained = _stored_sublists(store, version, index_options) if searchable else None
    generation = assemble(
        version,
        matrix,
        predictor,
        searchable=searchable,
        kmeans_centres=kmeans_centres,
        index_options=index_options,
        methods=methods,
        columns=columns,
        trained=trained,
    )
    if searchable:
        _save_sublists(store, generation, index_options, trained)
    log.info(
        "generation %d: %d items (%d labelled) in %d subCategories, indexed in %.1fs",
        version,
        len(generation.codes),
        int(generation.from_label.sum()),
        len(generation.sub_names),
        time.perf_counter() - started,
    )
    return generation


def assemble(
    version: int,
    matrix: CodeMatrix,
    predictor: CategoryPredictor | None,
    searchable: bool = True,
    kmeans_centres: dict[str, np.ndarray] | None = None,
    index_options: IndexOptions | None = None,
    methods: Sequence[str] = RANKING_METHODS,
    columns: dict[str, np.ndarray] | None = None,
    trained: dict[str, TrainedLists] | None = None,
) -> Generation:
    """A Generation of the given codes: categories (labels, else predicted), partitions and,
    when searchable, the indexes of `methods`. Only the code spaces those methods read are kept
    once indexed (at ten million items each space is 2.5 GB)."""
    codes = CodeSet(matrix.item_ids, matrix.mu, matrix.sigma, matrix.z)
    columns = columns or matrix.metadata.columns(SUB, MASTER, "gender")
    categories = categorise(codes.mu, columns[SUB], columns[MASTER], predictor)
    attributes = {SUB: categories.subs, MASTER: categories.masters, "gender": columns["gender"]}
    kmeans = (
        {s: from_centres(codes.space(s), kmeans_centres[s]) for s in SPACES}
        if kmeans_centres
        else None
    )
    partitionings = (
        index_partitions(
            codes,
            attributes,
            categories.master_of,
            kmeans,
            index_options,
            methods,
            trained,
            categories.labels(),
        )
        if searchable
        else {}
    )
    spread = codes.mu.std(axis=0)
    lower = (codes.mu.min(axis=0) - spread).astype(np.float32)
    upper = (codes.mu.max(axis=0) + spread).astype(np.float32)
    if searchable:
        codes = codes.keeping(spaces_read(methods))
    return Generation(
        version=version,
        codes=codes,
        metadata=matrix.metadata,
        row_of=dict(zip(codes.item_ids, range(len(codes.item_ids)), strict=True)),
        attributes=attributes,
        from_label=categories.from_label,
        confidence=categories.confidence,
        predictor=predictor,
        master_of=categories.master_of,
        sub_names=categories.sub_names,
        master_names=categories.master_names,
        partitionings=partitionings,
        lower=lower,
        upper=upper,
        position=matrix.position,
    )
