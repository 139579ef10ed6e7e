"""Everything a query needs about one generation of codes, built from Redis: codes, partitions, indexes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from atelier.clustering import Partition, by_category, fit_kmeans, from_centres
from atelier.search import CodeSet, SearchIndex
from atelier.store import CodeStore

log = logging.getLogger(__name__)
SPACES = ("mu", "z")


@dataclass(frozen=True)
class Generation:
    version: int
    codes: CodeSet
    metadata: list[dict[str, str]]
    row_of: dict[str, int]
    kmeans: (
        SearchIndex | None
    )  # partitioned by k-means clusters (μ and z spaces); None if not asked for
    categories: SearchIndex | None  # partitioned by catalogue category, when asked for
    lower: np.ndarray  # per-dimension slider bounds from the catalogue's μ
    upper: np.ndarray

    @property
    def latent_dim(self) -> int:
        return int(self.codes.mu.shape[1])


def build(
    store: CodeStore,
    version: int,
    k: int = 3,
    seed: int = 0,
    with_categories: bool = False,
    searchable: bool = True,
) -> Generation:
    """Load a generation from Redis and index it. k-means centres are fitted once and kept in Redis."""
    started = time.perf_counter()
    matrix = store.load_codes(version)
    if not matrix.item_ids:
        raise LookupError(f"generation {version} holds no codes")
    if searchable and len(matrix.item_ids) < k:
        raise LookupError(
            f"generation {version} holds {len(matrix.item_ids)} codes, fewer than k={k} clusters"
        )
    categories = np.array([m.get("category", "") for m in matrix.metadata])
    codes = CodeSet(matrix.item_ids, matrix.mu, matrix.sigma, matrix.z, categories)
    partitions: dict[str, Partition] = {}
    for space in SPACES if searchable else ():
        vectors = codes.space(space)
        stored = store.partition_centres(version, space, k)
        if stored is None:
            stored = store.save_partition_centres(
                version, space, fit_kmeans(vectors, codes.item_ids, k, seed).centres
            )
        partitions[space] = from_centres(vectors, stored)
    kmeans_index = SearchIndex(codes, partitions) if searchable else None
    category_index = None
    if with_categories:
        category_index = SearchIndex(
            codes, {s: by_category(codes.space(s), categories) for s in SPACES}
        )
    spread = codes.mu.std(axis=0)
    generation = Generation(
        version=version,
        codes=codes,
        metadata=matrix.metadata,
        row_of={item_id: row for row, item_id in enumerate(codes.item_ids)},
        kmeans=kmeans_index,
        categories=category_index,
        lower=(codes.mu.min(axis=0) - spread).astype(np.float32),
        upper=(codes.mu.max(axis=0) + spread).astype(np.float32),
    )
    log.info(
        "generation %d: %d items indexed in %.1fs",
        version,
        len(codes),
        time.perf_counter() - started,
    )
    return generation
