"""Exact latent search with FAISS: one flat index per partition (an IVF with one list per cluster).

Every method runs inside FAISS:

- `fixed_eps`, `mu_l2`: L2 on z or μ; `cityblock`: L1 on μ; `cosine`: inner product on unit μ;
- `loglik`: the paper's eq. 2 as an inner product, ⟨[z², z, 1], [−1/(2σ²), μ/σ², c]⟩ = log q(z|x),
  with z and μ taken relative to the partition's mean so float32 does not lose the small
  differences between large terms.

FAISS returns a short list (k plus a margin) in float32; the short list is then rescored in
float64 with the same formulas as the brute-force reference, and ties break by row. So a search
returns exactly the ranking of a float64 brute-force scan unless float32 error exceeds the score
gap at the margin, which the tests check never happens on real codes.
"""

from __future__ import annotations

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


def query_space(method: str) -> str:
    """Which code a method compares: the fixed-ε z, or μ (log-likelihood reads μ and σ)."""
    return "z" if method == "fixed_eps" else "mu"


# A conjunction of attribute conditions: ((attribute, allowed values), ...), e.g.
# (("sub_category", ("Shoes",)), ("gender", ("Men", "Unisex"))). Hashable, so selectors are cached.
Where = tuple[tuple[str, tuple[str, ...]], ...]
MAX_CACHED_SELECTORS = 4096


@dataclass(frozen=True)
class CodeSet:
    """A generation's codes, row-aligned; rows are in item-id order, which is also the tie-break."""

    item_ids: list[str]
    mu: np.ndarray
    sigma: np.ndarray
    z: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    def space(self, name: str) -> np.ndarray:
        return self.z if name == "z" else self.mu


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
        return (base @ q) / np.maximum(norms, 1e-30)
    raise ValueError(f"unknown method {method!r}")


def rank(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k by score (descending), ties broken by row (ascending)."""
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


def brute_force(
    method: str, query: np.ndarray, codes: CodeSet, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reference: score every row in float64 and rank."""
    return rank(exact_scores(method, query, codes, rows), rows, k)


@dataclass
class _PartitionIndex:
    rows: np.ndarray  # global rows of this partition's members, ascending
    index: faiss.Index
    shift: np.ndarray | None  # loglik: the members' mean μ, subtracted from z and μ


def _method_vectors(
    method: str, codes: CodeSet, rows: np.ndarray
) -> tuple[np.ndarray, int, np.ndarray | None]:
    if method == "loglik":
        mu = codes.mu[rows].astype(np.float64)
        shift = mu.mean(axis=0) if len(rows) else np.zeros(mu.shape[1])
        # Eq. 2 is translation invariant; centring keeps float32 from cancelling large terms.
        xb = loglik_item_vectors(mu - shift, codes.sigma[rows])
        return xb.astype(np.float32), faiss.METRIC_INNER_PRODUCT, shift
    base = codes.space(query_space(method))[rows].astype(np.float32)
    if method == "cosine":
        base = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-30)
        return base, faiss.METRIC_INNER_PRODUCT, None
    if method == "cityblock":
        return base, faiss.METRIC_L1, None
    return base, faiss.METRIC_L2, None


def _query_vector(method: str, query: np.ndarray, shift: np.ndarray | None) -> np.ndarray:
    q = np.asarray(query, dtype=np.float64)
    if method == "loglik":
        return loglik_query_vectors(q - shift).astype(np.float32)
    if method == "cosine":
        return (q / max(np.linalg.norm(q), 1e-30))[None].astype(np.float32)
    return q[None].astype(np.float32)


class SearchIndex:
    """All methods over one generation, partitioned by the μ-space and z-space partitions.

    `attributes` are per-row labels (subCategory, gender, ...) that a search can filter on.
    """

    def __init__(
        self,
        codes: CodeSet,
        partitions: dict[str, Partition],
        attributes: dict[str, np.ndarray] | None = None,
        methods: Sequence[str] = METHODS,
        margin: int = 32,
    ):
        self.codes = codes
        self.partitions = partitions
        self.attributes = {k: np.asarray(v).astype(str) for k, v in (attributes or {}).items()}
        self.margin = margin
        self._indexes: dict[str, list[_PartitionIndex]] = {}
        self._selectors: dict[tuple[str, int, Where], tuple[faiss.IDSelector | None, int]] = {}
        for method in methods:
            partition = partitions[query_space(method)]
            parts = []
            for label in range(len(partition.centres)):
                rows = np.flatnonzero(partition.labels == label)
                xb, metric, shift = _method_vectors(method, codes, rows)
                index = faiss.IndexFlat(xb.shape[1], metric)
                if len(xb):
                    index.add(xb)
                parts.append(_PartitionIndex(rows, index, shift))
            self._indexes[method] = parts

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self._indexes)

    def matches(self, rows: np.ndarray, where: Where) -> np.ndarray:
        """Which of the given rows pass every condition."""
        keep = np.ones(len(rows), bool)
        for attribute, values in where:
            if attribute not in self.attributes:
                raise ValueError(f"cannot filter on {attribute!r}; have {sorted(self.attributes)}")
            keep &= np.isin(self.attributes[attribute][rows], np.asarray(values, dtype=str))
        return keep

    def _selector(
        self, method: str, label: int, part: _PartitionIndex, where: Where
    ) -> tuple[faiss.IDSelector | None, int]:
        key = (method, label, where)
        cached = self._selectors.get(key)
        if cached is None:
            local = np.flatnonzero(self.matches(part.rows, where)).astype(np.int64)
            selector = faiss.IDSelectorBatch(local) if len(local) else None
            if len(self._selectors) >= MAX_CACHED_SELECTORS:
                self._selectors.clear()  # filters come from a small vocabulary; this rarely runs
            cached = self._selectors[key] = (selector, len(local))
        return cached

    def search(
        self,
        method: str,
        query: np.ndarray,
        k: int,
        partitions_to_search: Sequence[int] | None = None,
        where: Where = (),
        exclude_row: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the top k within the given partitions (all when None) that pass
        every condition of `where`."""
        if method not in self._indexes:
            raise ValueError(f"unknown method {method!r}; choose from {self.methods}")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        query = np.asarray(query, dtype=np.float64)
        if method == "cosine" and not np.linalg.norm(query) > 0:
            raise ValueError("cosine similarity needs a non-zero query vector")
        parts = self._indexes[method]
        chosen = range(len(parts)) if partitions_to_search is None else partitions_to_search
        wanted = k + self.margin + (exclude_row is not None)
        candidates = []
        for label in chosen:
            part = parts[label]
            params = None
            available = part.index.ntotal
            if where:
                selector, available = self._selector(method, int(label), part, where)
                if available:
                    params = faiss.SearchParameters(sel=selector)
            if available == 0:
                continue
            _, local = part.index.search(
                _query_vector(method, query, part.shift), min(wanted, available), params=params
            )
            local = local[0][local[0] >= 0]
            candidates.append(part.rows[local])
        rows = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, np.int64)
        if exclude_row is not None:
            rows = rows[rows != exclude_row]
        return rank(exact_scores(method, query, self.codes, rows), rows, k)
