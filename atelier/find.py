"""Find: search a served generation by scope. The query's own subCategory (labelled, else
predicted), its masterCategory, its nearest k-means clusters, or the whole catalogue; optionally
only the items of a named category."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atelier.generation import KMEANS, SUB, CategoryOf, Generation, Partitioning
from atelier.search import query_space

SCOPES = ("sub_category", "master_category", "kmeans", "catalogue")


class PartitionUnavailable(RuntimeError):
    """The deployment or the generation cannot answer this partitioning (for example k-means off)."""


@dataclass(frozen=True)
class Query:
    vector: np.ndarray  # in the method's space
    row: int | None  # the query's own row, for a catalogue item
    category: CategoryOf  # the item's, or predicted from the code
    gender: str  # a catalogue item's gender; empty for codes and photos


@dataclass(frozen=True)
class Found:
    rows: np.ndarray
    scores: np.ndarray
    partitioning: str  # the partitioning the results' partitions are named in
    searched: tuple[str, ...]  # the partitions searched; empty for the whole catalogue


def own_row(query: Query, also: np.ndarray | None = None) -> np.ndarray | None:
    """The rows a query never returns: its own, for a catalogue item, and `also` (sorted rows
    hidden from every search, e.g. items deleted since the index was built)."""
    if query.row is None:
        return also
    own = np.array([query.row], np.int64)
    return own if also is None else np.union1d(also, own)


def partitioning(generation: Generation, name: str) -> Partitioning:
    if name not in generation.partitionings:
        raise PartitionUnavailable(
            "k-means partitions are off in this deployment (KMEANS_K=0)"
            if name == KMEANS
            else f"generation {generation.version} has no {name} partitions"
        )
    return generation.partitionings[name]


def home_partition(partitioning: Partitioning, method: str, query: Query) -> int:
    """The query's own partition: its category's, or the nearest k-means centre."""
    if partitioning.name == KMEANS:
        return int(partitioning.by_space[query_space(method)].assign(query.vector)[0])
    name = (
        query.category.sub_category if partitioning.name == SUB else query.category.master_category
    )
    position = partitioning.position(name)
    if position is None:
        raise PartitionUnavailable(
            f"there is no category {name!r} to search in; search the whole catalogue instead"
        )
    return position


def search(
    generation: Generation,
    method: str,
    query: Query,
    k: int,
    scope: str = "sub_category",
    nprobe: int = 1,
    category: str = "",
    exclude_query: bool = True,
    exclude_rows: np.ndarray | None = None,
    exact: bool = False,
) -> Found:
    """The top k of a scope. Raises LookupError for an unknown named category, ValueError for
    bad arguments and PartitionUnavailable for a scope the deployment cannot answer."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose from {SCOPES}")
    if nprobe < 0:
        raise ValueError("nprobe must be >= 0")
    where = generation.category_where(category) if category else ()
    if scope == "catalogue":
        cut, searched = partitioning(generation, SUB), None
    elif scope == KMEANS:
        cut = partitioning(generation, KMEANS)
        centres = cut.by_space[query_space(method)]
        searched = centres.nearest(query.vector, max(1, min(nprobe, len(centres.centres)))).tolist()
    else:
        cut = partitioning(generation, scope)
        searched = [home_partition(cut, method, query)]
    members = None if searched is None else [m for p in searched for m in cut.members[p]]
    rows, scores = cut.index.search(
        method,
        query.vector,
        k,
        members,
        where,
        own_row(query, exclude_rows) if exclude_query else exclude_rows,
        exact=exact,
    )
    names = () if searched is None else tuple(cut.names[p] for p in searched)
    return Found(rows, scores, cut.name, names)
