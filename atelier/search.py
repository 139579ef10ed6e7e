"""Latent search with FAISS: one IVF index per method, each partition owning a range of its lists.

Every method runs inside FAISS:

- `fixed_eps`, `mu_l2`: L2 on z or μ; `cityblock`: L1 on μ; `cosine`: inner product on unit μ;
- `loglik`: the paper's eq. 2 as an inner product, ⟨[z², z, 1], [−1/(2σ²), μ/σ², c]⟩ = log q(z|x),
  with z and μ taken relative to the partition's mean so float32 does not lose the small
  differences between large terms.

A partition (a subCategory or a k-means cluster) owns a contiguous range of the index's inverted
lists. With `IndexOptions(kind="flat")` that range is one list, so every search is exact; with
`kind="ivf"` the partition is cut into about √n sublists by k-means in the method's comparison
space, and a search probes the `nprobe` sublists nearest the query (or all of them with
`exact=True`). Items are added to the lists we assign and searched over the lists we choose, so
FAISS's quantizer is never used.

FAISS returns a short list (k plus a margin) in float32; the short list is then rescored in
float64 with the same formulas as the brute-force reference, and ties break by item id. So an
exact search returns exactly the ranking of a float64 brute-force scan unless float32 error exceeds
the score gap at the margin, which the tests check never happens on real codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from atelier.clustering import Partition
from atelier.latent import (
    RANKING_METHODS,
    log_likelihood,
    loglik_item_vectors,
    loglik_query_vectors,
)

METHODS = RANKING_METHODS
MAX_K = 1000
KINDS = ("flat", "ivf")


def query_space(method: str) -> str:
    """Which code a method compares: the fixed-ε z, or μ (log-likelihood reads μ and σ)."""
    return "z" if method == "fixed_eps" else "mu"


def list_space(method: str) -> str:
    """The space a method's sublists are cut in: z, μ, or unit μ for cosine."""
    return "unit" if method == "cosine" else query_space(method)


LIST_SPACES = ("z", "mu", "unit")


# A conjunction of attribute conditions: ((attribute, allowed values), ...), e.g.
# (("sub_category", ("Shoes",)), ("gender", ("Men", "Unisex"))). Hashable, so selectors are cached.
Where = tuple[tuple[str, tuple[str, ...]], ...]
# Each cached filter is a bitmap of n/8 bytes; filters come from a small vocabulary.
MAX_CACHED_SELECTORS = 256
# Exclusions longer than this go to FAISS as a bitmap rather than a hash set.
MAX_BATCH_EXCLUSIONS = 4096


@dataclass(frozen=True)
class IndexOptions:
    """How a deployment lays out its indexes.

    kind="flat": each partition is one list, every search exact. kind="ivf": a partition of n
    items is cut into max(1, min(⌈√n·lists_factor⌉, n // min_list_size)) sublists by k-means
    (trained on at most `points_per_list` points per sublist), and a search probes the `nprobe`
    sublists of the searched partitions nearest the query, more when those hold fewer than k
    eligible items.
    """

    kind: str = "flat"
    # Tuned on the `scale` benchmark (docs/benchmarks.md): √n lists with 96 probed gave a recall@10
    # of 0.9886 at 10M; half as many lists, twice as long, with 64 probed scan a quarter more
    # items per search, and assigning items to half the lists halves that part of a cold start.
    nprobe: int = 64
    lists_factor: float = 0.5
    min_list_size: int = 64
    points_per_list: int = 48
    niter: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")
        if self.nprobe < 1 or self.min_list_size < 1 or self.points_per_list < 1:
            raise ValueError("nprobe, min_list_size and points_per_list must be >= 1")
        if not self.lists_factor > 0 or self.niter < 1:
            raise ValueError("lists_factor must be > 0 and niter >= 1")

    def lists_for(self, size: int) -> int:
        """How many sublists a partition of `size` items gets."""
        if self.kind == "flat":
            return 1
        wanted = math.ceil(math.sqrt(size) * self.lists_factor)
        return max(1, min(wanted, size // self.min_list_size))


@dataclass(frozen=True)
class CodeSet:
    """A generation's codes, row-aligned. Ties between equal scores break by item id."""

    item_ids: list[str]
    mu: np.ndarray
    sigma: np.ndarray
    z: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    def space(self, name: str) -> np.ndarray:
        return self.z if name == "z" else self.mu

    def keeping(self, spaces: set[str]) -> CodeSet:
        """The same codes with only the given arrays ("mu", "sigma", "z"); the others become
        empty (0, d) arrays, so a stray read fails loudly instead of returning made-up codes."""
        dim = self.mu.shape[1]
        empty = np.zeros((0, dim), np.float32)
        return CodeSet(
            self.item_ids,
            self.mu if "mu" in spaces else empty,
            self.sigma if "sigma" in spaces else empty,
            self.z if "z" in spaces else empty,
        )


def spaces_read(methods: Sequence[str]) -> set[str]:
    """The code arrays the given methods score with (rescoring reads them per query)."""
    spaces = {query_space(m) for m in methods}
    if "loglik" in methods:
        spaces |= {"mu", "sigma"}
    return spaces


def exact_scores(method: str, query: np.ndarray, codes: CodeSet, rows: np.ndarray) -> np.ndarray:
    """float64 scores, higher is better, of one query vector against the given rows."""
    q = np.asarray(query, dtype=np.float64)
    if method == "loglik":
        return log_likelihood(q[None], codes.mu[rows], codes.sigma[rows])[0]
    base = codes.space(query_space(method))[rows].astype(np.float64)
    if method in ("fixed_eps", "mu_l2"):
        return -np.sqrt(((base - q) ** 2).sum(axis=1))
    if method == "cityblock":
        return -np.abs(base - q).sum(axis=1)
    if method == "cosine":
        norms = np.linalg.norm(base, axis=1) * np.linalg.norm(q)
        # Row by row, not a BLAS matrix-vector product: that rounds a row differently depending on
        # which rows are scored with it, and a short list must score as the full scan does.
        return (base * q).sum(axis=1) / np.maximum(norms, 1e-30)
    raise ValueError(f"unknown method {method!r}")


def rank(
    scores: np.ndarray, rows: np.ndarray, k: int, item_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Top k by score (descending), ties broken by item id (ascending), so the order never depends
    on where an item is stored and merged shards agree."""
    scores, rows = np.asarray(scores), np.asarray(rows)
    if len(scores) > k:
        # Only the rows at or above the k-th score can be returned; only they need their ids.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= kth)
        scores, rows = scores[keep], rows[keep]
    ids = np.array([item_ids[row] for row in rows.tolist()], dtype=str)
    order = np.lexsort((ids, -scores))[:k]
    return rows[order], scores[order]


def brute_force(
    method: str, query: np.ndarray, codes: CodeSet, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: score every row in float64 and rank."""
    return rank(exact_scores(method, query, codes, rows), rows, k, codes.item_ids)


@dataclass(frozen=True)
class Sublists:
    """The sublists of one list space, shared by the methods that compare in it. An item is in
    exactly one list, so each method's index holds each vector once."""

    centroids: np.ndarray  # (L, d) float32, in the list space
    norms: np.ndarray  # (L,) squared centroid norms
    starts: np.ndarray  # (P + 1,): partition p owns lists starts[p]:starts[p + 1]
    owner: np.ndarray  # (L,) the partition of each list
    sizes: np.ndarray  # (L,) items per list

    def of(self, partitions: Sequence[int] | None) -> np.ndarray:
        if partitions is None:
            return np.arange(len(self.owner), dtype=np.int64)
        return np.concatenate(
            [np.arange(self.starts[p], self.starts[p + 1]) for p in partitions]
            or [np.zeros(0, np.int64)]
        ).astype(np.int64)


@dataclass(frozen=True)
class _Spread:
    """Per list, what loglik needs to choose lists: with P the members' mean 1/σ², and S their
    mean Σ log σ, a list's score for query q is −½ Σ P (q − c)² − S = −½ (P·q² − 2 Pc·q + Pc·c) − S.
    Euclidean distance to the centroid ignores σ, which varies a lot in real codes."""

    precision: np.ndarray  # (L, d) P
    weighted: np.ndarray  # (L, d) P·c
    constant: np.ndarray  # (L,) ½ Pc·c + S

    @classmethod
    def of(cls, centroids: np.ndarray, precision: np.ndarray, log_sigma: np.ndarray) -> _Spread:
        weighted = precision * centroids
        constant = 0.5 * (weighted * centroids).sum(axis=1) + log_sigma
        return cls(precision.astype(np.float32), weighted.astype(np.float32), constant)

    def scores(self, query: np.ndarray, lists: np.ndarray) -> np.ndarray:
        q = np.asarray(query, np.float32)
        everything = len(lists) == len(self.constant)
        precision = self.precision if everything else self.precision[lists]
        weighted = self.weighted if everything else self.weighted[lists]
        constant = self.constant if everything else self.constant[lists]
        return weighted @ q - 0.5 * (precision @ (q * q)) - constant


@dataclass
class _MethodIndex:
    index: faiss.IndexIVFFlat
    lists: Sublists
    shifts: np.ndarray | None  # loglik: each partition's mean μ, subtracted from z and μ
    spread: _Spread | None = None  # loglik: each list's σ, to choose lists by likelihood


def _space_vectors(space: str, codes: CodeSet, rows: np.ndarray) -> np.ndarray:
    base = codes.space("z" if space == "z" else "mu")[rows].astype(np.float32, copy=False)
    if space == "unit":
        base /= np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-30)
    return base


def _method_vectors(
    method: str, codes: CodeSet, rows: np.ndarray, shift: np.ndarray | None
) -> np.ndarray:
    if method == "loglik":
        # Eq. 2 is translation invariant; centring keeps float32 from cancelling large terms.
        mu = codes.mu[rows].astype(np.float64) - shift
        return loglik_item_vectors(mu, codes.sigma[rows]).astype(np.float32)
    return _space_vectors(list_space(method), codes, rows)


def _metric(method: str) -> int:
    if method in ("loglik", "cosine"):
        return faiss.METRIC_INNER_PRODUCT
    return faiss.METRIC_L1 if method == "cityblock" else faiss.METRIC_L2


def _query_vectors(method: str, query: np.ndarray, shifts: np.ndarray | None) -> np.ndarray:
    q = np.asarray(query, dtype=np.float64)
    if method == "loglik":
        return loglik_query_vectors(q[None] - shifts).astype(np.float32)
    if method == "cosine":
        return (q / max(np.linalg.norm(q), 1e-30))[None].astype(np.float32)
    return q[None].astype(np.float32)


def _sublists(
    x: np.ndarray, count: int, options: IndexOptions, spherical: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of `count` sublists of x and each row's sublist."""
    if count == 1 or len(x) == 0:
        centre = x.mean(axis=0, dtype=np.float64) if len(x) else np.zeros(x.shape[1])
        if spherical:
            centre /= max(np.linalg.norm(centre), 1e-30)
        return centre[None].astype(np.float32), np.zeros(len(x), np.int64)
    sample = x
    if len(x) > count * options.points_per_list:
        picked = np.random.default_rng(seed).choice(len(x), count * options.points_per_list, False)
        sample = x[np.sort(picked)]
    kmeans = faiss.Kmeans(
        x.shape[1],
        count,
        niter=options.niter,
        seed=seed,
        spherical=spherical,
        max_points_per_centroid=options.points_per_list,
        min_points_per_centroid=1,
    )
    kmeans.train(np.ascontiguousarray(sample))
    centroids = kmeans.centroids.astype(np.float32)
    return centroids, _nearest(x, centroids)


def _reusable_lists(
    given: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None,
    names: Sequence[str],
    per_partition: Sequence[int],
) -> dict[int, np.ndarray]:
    """Partition -> its earlier centroids, for each partition found under the same name with the
    same number of lists (the others are trained again)."""
    if given is None:
        return {}
    given_names, given_counts, centroids = given
    starts = np.concatenate([[0], np.cumsum(given_counts)]).astype(np.int64)
    if len(given_names) != len(given_counts) or starts[-1] != len(centroids):
        return {}  # not a state this code wrote: train
    where = {name: i for i, name in enumerate(given_names)}
    found = {}
    for p, name in enumerate(names):
        i = where.get(name)
        if i is not None and int(given_counts[i]) == int(per_partition[p]):
            found[p] = centroids[starts[i] : starts[i + 1]]
    return found


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's nearest centroid (Euclidean; on the unit sphere, the most similar)."""
    if len(centroids) == 1:
        return np.zeros(len(x), np.int64)
    nearest = faiss.IndexFlatL2(x.shape[1])
    nearest.add(np.ascontiguousarray(centroids, np.float32))
    _, assigned = nearest.search(np.ascontiguousarray(x, np.float32), 1)
    return assigned[:, 0].astype(np.int64)


def _empty_ivf(dim: int, nlist: int, metric: int) -> faiss.IndexIVFFlat:
    # The quantizer is never asked: lists are assigned and chosen here.
    index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, metric), dim, nlist, metric)
    index.is_trained = True
    return index


def _add_sorted(
    index: faiss.IndexIVFFlat, xb: np.ndarray, ids: np.ndarray, first: int, sizes: np.ndarray
) -> None:
    """Append rows already sorted by sublist, one call per list: each list is allocated once at its
    exact size (adding entry by entry, as add_core does, leaves vectors with spare capacity)."""
    if not len(xb):  # an empty partition (a k-means cluster a shard holds nothing of)
        return
    codes = np.ascontiguousarray(xb).view(np.uint8).reshape(len(xb), -1)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    offset = 0
    for position, size in enumerate(sizes.tolist()):
        if size:
            index.invlists.add_entries(
                first + position,
                size,
                faiss.swig_ptr(ids[offset : offset + size]),
                faiss.swig_ptr(codes[offset : offset + size]),
            )
            offset += size
    index.ntotal += len(xb)


def _grouped(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by partition (ascending within each) and each partition's bounds."""
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=count))])
    return order.astype(np.int64), bounds


def _bitmap_selector(mask: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    bitmap = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap)), bitmap


# Per list space ("z", "mu", "unit"): the partitions' names, the lists each is cut into and
# their centroids, in partition order.
TrainedLists = dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]]


class SearchIndex:
    """All methods over one generation, partitioned by the μ-space and z-space partitions.

    `attributes` are per-row labels (subCategory, gender, ...) that a search can filter on.
    FAISS ids are global rows, so filters and exclusions are row selectors.
    """

    def __init__(
        self,
        codes: CodeSet,
        partitions: dict[str, Partition],
        attributes: dict[str, np.ndarray] | None = None,
        methods: Sequence[str] = METHODS,
        margin: int = 32,
        options: IndexOptions | None = None,
        trained: TrainedLists | None = None,
    ):
        """`trained`: sublist centroids from an earlier build of the same generation (see
        `trained_lists`); a partition of the same name that still gets the same number of lists
        reuses its centroids and only assigns its items, instead of running k-means again."""
        self.codes = codes
        self.partitions = partitions
        # Shared with the generation, not copied: at ten million items each column is ~1 GB.
        self.attributes = {
            k: np.asarray(v).astype(str, copy=False) for k, v in (attributes or {}).items()
        }
        self.margin = margin
        self.options = options or IndexOptions()
        self._indexes: dict[str, _MethodIndex] = {}
        self._selectors: dict[Where, tuple[faiss.IDSelector | None, np.ndarray | None, int]] = {}
        self._trained: TrainedLists = {}
        self.retrained = False  # whether any partition's lists were trained, not reused
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
        spaces: dict[str, list[str]] = {}
        for method in methods:
            spaces.setdefault(list_space(method), []).append(method)
        for space, group in spaces.items():
            self._build_space(space, group, (trained or {}).get(space))

    def trained_lists(self) -> TrainedLists:
        """Per list space, the lists per partition and their centroids: what a later build of
        the same generation can reuse."""
        return dict(self._trained)

    def _build_space(
        self,
        space: str,
        methods: list[str],
        given: tuple[tuple[str, ...], np.ndarray, np.ndarray] | None,
    ) -> None:
        """Cut every partition into sublists once, and fill each method's index from them."""
        codes, options = self.codes, self.options
        partition = self.partitions["z" if space == "z" else "mu"]
        count = len(partition.centres)
        order, bounds = _grouped(np.asarray(partition.labels, np.int64), count)
        per_partition = [options.lists_for(int(n)) for n in np.diff(bounds)]
        starts = np.concatenate([[0], np.cumsum(per_partition)]).astype(np.int64)
        nlist = int(starts[-1])
        reusable = _reusable_lists(given, partition.names, per_partition)
        dim = codes.mu.shape[1]
        centroids = np.zeros((nlist, dim), np.float32)
        sizes = np.zeros(nlist, np.int64)
        shifts = np.zeros((count, dim)) if "loglik" in methods else None
        precision = np.zeros((nlist, dim)) if "loglik" in methods else None
        log_sigma = np.zeros(nlist)
        indexes = {}
        for method in methods:
            width = 2 * dim + 1 if method == "loglik" else dim
            indexes[method] = _empty_ivf(width, nlist, _metric(method))
        for p in range(count):
            rows = order[bounds[p] : bounds[p + 1]]
            x = _space_vectors(space, codes, rows)
            if p in reusable:
                cents = reusable[p]
                assigned = _nearest(x, cents)
            else:
                cents, assigned = _sublists(
                    x, per_partition[p], options, space == "unit", options.seed + p
                )
                self.retrained = True
            del x
            centroids[starts[p] : starts[p + 1]] = cents
            by_list = np.argsort(assigned, kind="stable")
            rows = rows[by_list]
            counts = np.bincount(assigned, minlength=per_partition[p])
            sizes[starts[p] : starts[p + 1]] = counts
            if shifts is not None and len(rows):
                shifts[p] = codes.mu[rows].astype(np.float64).mean(axis=0)
                sigma = codes.sigma[rows].astype(np.float64)
                filled = np.flatnonzero(counts)
                firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
                lists_of_p = starts[p] + filled
                precision[lists_of_p] = np.add.reduceat(sigma**-2, firsts) / counts[filled, None]
                log_sigma[lists_of_p] = (
                    np.add.reduceat(np.log(sigma).sum(axis=1), firsts) / counts[filled]
                )
            for method in methods:
                shift = shifts[p] if method == "loglik" else None
                xb = _method_vectors(method, codes, rows, shift)
                _add_sorted(indexes[method], xb, rows, int(starts[p]), counts)
        self._trained[space] = (
            tuple(partition.names),
            np.asarray(per_partition, np.int64),
            centroids,
        )
        owner = np.repeat(np.arange(count), per_partition).astype(np.int64)
        lists = Sublists(
            centroids, (centroids.astype(np.float64) ** 2).sum(1), starts, owner, sizes
        )
        for method in methods:
            self._indexes[method] = _MethodIndex(indexes[method], lists, None)
        if "loglik" in methods:
            spread = _Spread.of(centroids.astype(np.float64), precision, log_sigma)
            self._indexes["loglik"] = _MethodIndex(indexes["loglik"], lists, shifts, spread)

    def sublists(self, method: str) -> Sublists:
        """How a method's index is laid out: each partition's lists, their centroids and sizes."""
        return self._indexes[method].lists

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in METHODS if m in self._indexes)

    def matches(self, rows: np.ndarray, where: Where) -> np.ndarray:
        """Which of the given rows pass every condition."""
        keep = np.ones(len(rows), bool)
        for attribute, values in where:
            if attribute not in self.attributes:
                raise ValueError(f"cannot filter on {attribute!r}; have {sorted(self.attributes)}")
            keep &= np.isin(self.attributes[attribute][rows], np.asarray(values, dtype=str))
        return keep

    def _where_selector(
        self, where: Where
    ) -> tuple[faiss.IDSelector | None, np.ndarray | None, int]:
        """A bitmap selector of the rows passing `where`, its bitmap, and how many pass."""
        if not where:
            return None, None, len(self.codes)
        cached = self._selectors.get(where)
        if cached is None:
            mask = self.matches(np.arange(len(self.codes)), where)
            selector, bitmap = _bitmap_selector(mask)
            if len(self._selectors) >= MAX_CACHED_SELECTORS:
                self._selectors.clear()  # filters come from a small vocabulary; this rarely runs
            cached = self._selectors[where] = (selector, bitmap, int(mask.sum()))
        return cached

    def _params(
        self, where: Where, exclude_rows: np.ndarray | None
    ) -> tuple[faiss.IDSelector | None, list, int]:
        """The selector for a search, the objects it points into (kept alive for the call), and
        an upper bound on the rows it lets through."""
        selector, bitmap, available = self._where_selector(where)
        keep: list = [selector, bitmap]
        if exclude_rows is not None and len(exclude_rows):
            rows = np.ascontiguousarray(exclude_rows, dtype=np.int64)
            if len(rows) <= MAX_BATCH_EXCLUSIONS:
                excluded = faiss.IDSelectorBatch(rows)
            else:
                mask = np.zeros(len(self.codes), bool)
                mask[rows] = True
                excluded, excluded_bitmap = _bitmap_selector(mask)
                keep.append(excluded_bitmap)
            allowed = faiss.IDSelectorNot(excluded)
            keep += [excluded, allowed]
            if selector is not None:
                allowed = faiss.IDSelectorAnd(selector, allowed)
                keep.append(allowed)
            selector = allowed
        return selector, keep, available

    def _scan(
        self,
        method: str,
        query: np.ndarray,
        lists: np.ndarray,
        wanted: int,
        selector: faiss.IDSelector | None,
    ) -> np.ndarray:
        """The rows FAISS puts in the top `wanted` of the given lists (float32 scores)."""
        entry = self._indexes[method]
        available = int(entry.lists.sizes[lists].sum())
        if available == 0:
            return np.zeros(0, np.int64)
        if entry.shifts is None:
            xq = _query_vectors(method, query, None)
            probe = lists[None]
        else:
            # One query row per partition, each relative to its partition's mean μ.
            owners = entry.lists.owner[lists]
            by_owner = np.argsort(owners, kind="stable")
            parts, first, counts = np.unique(
                owners[by_owner], return_index=True, return_counts=True
            )
            probe = np.full((len(parts), int(counts.max())), -1, np.int64)
            column = np.arange(len(lists)) - np.repeat(first, counts)
            probe[np.repeat(np.arange(len(parts)), counts), column] = lists[by_owner]
            xq = _query_vectors(method, query, entry.shifts[parts])
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        probe = np.ascontiguousarray(probe, dtype=np.int64)
        k = min(wanted, available)
        n, width = probe.shape
        distances = np.empty((n, k), np.float32)
        labels = np.empty((n, k), np.int64)
        params = faiss.SearchParametersIVF(nprobe=width)
        if selector is not None:
            params.sel = selector
        entry.index.search_preassigned_c(
            n,
            faiss.swig_ptr(xq),
            k,
            faiss.swig_ptr(probe),
            faiss.swig_ptr(np.zeros(probe.shape, np.float32)),
            faiss.swig_ptr(distances),
            faiss.swig_ptr(labels),
            False,
            params,
        )
        return labels[labels >= 0]

    def _probe_order(self, method: str, query: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """The lists ordered by their centroid's distance to the query, nearest first (for loglik,
        by the query's likelihood under each list's centroid and mean σ)."""
        entry = self._indexes[method]
        if entry.spread is not None:
            return lists[np.argsort(-entry.spread.scores(query, lists), kind="stable")]
        q = np.asarray(query, np.float32)
        if method == "cosine":
            q = q / max(float(np.linalg.norm(q)), 1e-30)
        centroids = entry.lists.centroids
        if len(lists) == len(centroids):
            distances = entry.lists.norms - 2.0 * (centroids @ q)
        else:
            distances = entry.lists.norms[lists] - 2.0 * (centroids[lists] @ q)
        return lists[np.argsort(distances, kind="stable")]

    def search(
        self,
        method: str,
        query: np.ndarray,
        k: int,
        partitions_to_search: Sequence[int] | None = None,
        where: Where = (),
        exclude_rows: np.ndarray | None = None,
        *,
        exact: bool = False,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the top k within the given partitions (all when None) that pass
        every condition of `where` and are not in `exclude_rows`.

        Exact with kind="flat" or `exact=True`; otherwise approximate, probing the `nprobe`
        sublists nearest the query (the options' default when None), and more until k plus the
        margin eligible items are found or every sublist has been probed.
        """
        if method not in self._indexes:
            raise ValueError(f"unknown method {method!r}; choose from {self.methods}")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        nprobe = self.options.nprobe if nprobe is None else nprobe
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        query = np.asarray(query, dtype=np.float64)
        if method == "cosine" and not np.linalg.norm(query) > 0:
            raise ValueError("cosine similarity needs a non-zero query vector")
        wanted = k + self.margin
        lists = self._indexes[method].lists.of(partitions_to_search)
        selector, keep, available = self._params(where, exclude_rows)
        candidates = []
        if available and len(lists):
            if exact or self.options.kind == "flat" or len(lists) <= nprobe:
                candidates.append(self._scan(method, query, lists, wanted, selector))
            else:
                ordered = self._probe_order(method, query, lists)
                done, step, found = 0, nprobe, 0
                while done < len(ordered) and found < wanted:
                    batch = ordered[done : done + step]
                    candidates.append(self._scan(method, query, batch, wanted, selector))
                    found += len(candidates[-1])
                    done += len(batch)
                    step = done  # doubles the lists probed in each round
        del keep  # the selector's parts must live until here
        rows = np.concatenate(candidates) if candidates else np.zeros(0, np.int64)
        return rank(exact_scores(method, query, self.codes, rows), rows, k, self.codes.item_ids)


def recall_at_k(
    index: SearchIndex,
    method: str,
    queries: np.ndarray,
    k: int = 10,
    partitions: Sequence[int] | None = None,
    nprobe: int | None = None,
    own_rows: Sequence[int] | None = None,
) -> float:
    """Mean fraction of the exact top k that the approximate search returns, over the queries
    (each a vector in the method's space), searching the given partitions (all when None).
    `own_rows[i]`, when given, is query i's own row, left out of both searches."""
    found = []
    for number, query in enumerate(np.atleast_2d(queries)):
        exclude = None if own_rows is None else np.array([own_rows[number]], np.int64)
        approximate, _ = index.search(method, query, k, partitions, (), exclude, nprobe=nprobe)
        truth, _ = index.search(method, query, k, partitions, (), exclude, exact=True)
        if len(truth):
            found.append(len(np.intersect1d(approximate, truth)) / len(truth))
    return float(np.mean(found)) if found else 1.0
