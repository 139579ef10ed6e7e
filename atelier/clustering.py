"""Partitions of the latent space: k-means clusters (scikit-learn) or catalogue categories, and their centres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

ASSIGN_CHUNK_VALUES = 1 << 22  # float64 values per chunk of nearest-centre distances
SUM_CHUNK_VALUES = 1 << 22  # float64 values per chunk of category sums


@dataclass(frozen=True)
class Partition:
    """Centres and each item's partition. names[i] labels partition i (a cluster number or a category)."""

    centres: np.ndarray  # (p, d) float32
    labels: np.ndarray  # (n,) int, row-aligned with the codes
    names: tuple[str, ...]

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest centre (Euclidean) for each row: how a query finds its cluster."""
        vectors = np.atleast_2d(np.asarray(vectors))
        centres = self.centres.astype(np.float64)
        labels = np.zeros(len(vectors), np.int64)
        # Chunked so the (rows, centres, dims) differences stay small at millions of rows.
        step = max(1, ASSIGN_CHUNK_VALUES // max(1, centres.size))
        for start in range(0, len(vectors), step):
            chunk = vectors[start : start + step].astype(np.float64)
            distances = ((chunk[:, None, :] - centres[None]) ** 2).sum(axis=2)
            labels[start : start + step] = np.argmin(distances, axis=1)
        return labels

    def nearest(self, vector: np.ndarray, count: int) -> np.ndarray:
        """The `count` partitions whose centres are closest to one vector (for nprobe)."""
        distances = ((self.centres.astype(np.float64) - np.asarray(vector, np.float64)) ** 2).sum(
            axis=1
        )
        return np.argsort(distances, kind="stable")[:count]


def fit_kmeans(vectors: np.ndarray, item_ids: Sequence[str], k: int, seed: int = 0) -> Partition:
    """k-means on the codes, fitted in item-id order so the result never depends on row order.

    Labels come from nearest-centre assignment, the same rule queries use.
    """
    if k < 1 or k > len(vectors):
        raise ValueError(f"k must be between 1 and the number of items ({len(vectors)}), got {k}")
    order = np.argsort(np.asarray(item_ids, dtype=object), kind="stable")
    model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(
        np.asarray(vectors, np.float32)[order]
    )
    centres = model.cluster_centers_.astype(np.float32)
    partition = Partition(centres, np.zeros(len(vectors), int), tuple(str(i) for i in range(k)))
    return Partition(centres, partition.assign(vectors), partition.names)


def from_centres(
    vectors: np.ndarray, centres: np.ndarray, names: Sequence[str] | None = None
) -> Partition:
    """Rebuild a partition from stored centres (e.g. read back from Redis)."""
    names = tuple(names) if names else tuple(str(i) for i in range(len(centres)))
    partition = Partition(np.asarray(centres, np.float32), np.zeros(len(vectors), int), names)
    return Partition(partition.centres, partition.assign(vectors), names)


def label_names(labels: np.ndarray, chunk: int = 1_000_000) -> tuple[str, ...]:
    """The distinct labels, sorted: a set per chunk (np.unique sorts every string, which takes
    tens of seconds at ten million items; a catalogue has a few hundred labels at most)."""
    found: set[str] = set()
    for start in range(0, len(labels), chunk):
        found.update(labels[start : start + chunk].tolist())
    return tuple(sorted(found))


def label_codes(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Each label's position in `names` (a binary search, at C speed); ValueError names a label
    that is not among them."""
    labels = np.asarray(labels).astype(str, copy=False)
    named = np.array(names, dtype=str)
    by_name = np.argsort(named, kind="stable")
    found = np.minimum(np.searchsorted(named[by_name], labels), max(0, len(names) - 1))
    unknown = (named[by_name][found] != labels) if len(names) else np.ones(len(labels), bool)
    if unknown.any():
        label = labels[np.flatnonzero(unknown)[0]]
        raise ValueError(f"label {str(label)!r} is not one of the partitions")
    return by_name[found].astype(np.int64)


def by_labels(
    vectors: np.ndarray,
    labels: Sequence[str],
    names: Sequence[str] | None = None,
    codes: np.ndarray | None = None,
) -> Partition:
    """Catalogue categories as partitions; each centre is its category's mean code.

    `names` fixes the partitions and their order (every label must be among them); by default
    they are the labels present, sorted. `codes`: each label's position in `names`, when the
    caller has them already (finding them again takes seconds at ten million items).
    """
    if codes is None:
        labels = np.asarray(labels).astype(str, copy=False)
        names = tuple(names) if names is not None else label_names(labels)
        index = label_codes(labels, names)
    else:
        names, index = tuple(names or ()), np.asarray(codes, np.int64)
    vectors = np.asarray(vectors)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    sums = np.zeros((len(names), dim))
    counts = np.bincount(index, minlength=len(names))
    # Sum each label's rows in label order, a chunk at a time (np.add.at is slow at millions of
    # rows, and a float64 copy of every code would double the memory).
    order = np.argsort(index, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    step = max(1, SUM_CHUNK_VALUES // max(1, dim))
    for label in range(len(names)):
        for start in range(bounds[label], bounds[label + 1], step):
            rows = order[start : min(start + step, bounds[label + 1])]
            sums[label] += vectors[rows].sum(axis=0, dtype=np.float64)
    centres = sums / np.maximum(counts, 1)[:, None]
    return Partition(centres.astype(np.float32), index, names)
