"""Complete the look by latent arithmetic (the paper's eq. 3), over any partitioning.

For a query in partition i: the most similar items in i, and for every target partition j the
items of j nearest to z + (centre_j − centre_i), ranked by any search method. Centres are the
partitions' mean codes in the method's space (subCategory means by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atelier.find import Query, home_partition, own_row, partitioning
from atelier.generation import Generation, Partitioning
from atelier.search import Where, query_space

UNISEX = "Unisex"


def allowed_genders(gender: str) -> tuple[str, ...] | None:
    """The pairing rule: the same gender, Unisex, or unknown; None when anything goes (the query
    is Unisex or has no gender)."""
    if not gender or gender == UNISEX:
        return None
    return (gender, UNISEX, "")


def gender_rule(gender: str) -> Where:
    allowed = allowed_genders(gender)
    return () if allowed is None else (("gender", allowed),)


def genders_compatible(gender: str, item_genders: np.ndarray) -> np.ndarray:
    """Per item: does it pass the pairing rule for a query of this gender?"""
    allowed = allowed_genders(gender)
    if allowed is None:
        return np.ones(len(item_genders), bool)
    return np.isin(np.asarray(item_genders).astype(str), allowed)


@dataclass(frozen=True)
class Recommendation:
    home: int
    similar: tuple[np.ndarray, np.ndarray]  # rows, scores
    pairings: dict[int, tuple[np.ndarray, np.ndarray]]  # partition -> rows, scores


def recommend(
    partitioning: Partitioning,
    method: str,
    query: np.ndarray,
    k: int,
    home: int,
    targets: Sequence[int] | None = None,
    pairing_where: Where = (),
    exclude_rows: np.ndarray | None = None,
    exact: bool = False,
) -> Recommendation:
    """Similar items in `home`, and eq. 3 pairings in each target (every other partition by
    default, largest first). Pairings pass `pairing_where`; a target with none is left out. Rows in
    `exclude_rows` (sorted) are never returned."""
    centres = partitioning.by_space[query_space(method)].centres.astype(np.float64)
    index = partitioning.index
    query = np.asarray(query, dtype=np.float64)
    similar = index.search(
        method, query, k, partitioning.members[home], exclude_rows=exclude_rows, exact=exact
    )
    if targets is None:
        sizes = np.bincount(partitioning.by_space["mu"].labels, minlength=len(centres))
        targets = [int(p) for p in np.argsort(-sizes, kind="stable")]
    pairings = {}
    for other in targets:
        if other == home:
            continue
        shifted = query + (centres[other] - centres[home])
        rows, scores = index.search(
            method,
            shifted,
            k,
            partitioning.members[other],
            pairing_where,
            exclude_rows,
            exact=exact,
        )
        if len(rows):
            pairings[other] = (rows, scores)
    return Recommendation(home, similar, pairings)


@dataclass(frozen=True)
class Look:
    """A complete-the-look answer with its partitions named."""

    partitioning: str
    home: str
    similar: tuple[np.ndarray, np.ndarray]
    pairings: dict[str, tuple[np.ndarray, np.ndarray]]
    matched_gender: str  # the gender the pairings were matched to; empty when the rule was off


def complete_the_look(
    generation: Generation,
    method: str,
    query: Query,
    k: int,
    partitioning_name: str = "sub_category",
    targets: Sequence[str] = (),
    match_gender: bool = True,
    gender: str = "",
    exclude_rows: np.ndarray | None = None,
    exact: bool = False,
) -> Look:
    """Similar items in the query's partition and eq. 3 pairings from the named targets (every
    other partition by default). With `match_gender`, pairings follow the gender rule for the
    item's gender, or `gender` for a code or photo. Raises ValueError for unknown targets."""
    cut = partitioning(generation, partitioning_name)
    home = home_partition(cut, method, query)
    positions = None
    if targets:
        unknown = [t for t in targets if cut.position(t) is None]
        if unknown:
            raise ValueError(
                f"unknown target categories {unknown}; choose from {', '.join(cut.names)}"
            )
        positions = [cut.position(t) for t in targets]
    matched = (query.gender or gender) if match_gender else ""
    rule = gender_rule(matched)
    result = recommend(
        cut, method, query.vector, k, home, positions, rule, own_row(query, exclude_rows), exact
    )
    return Look(
        cut.name,
        cut.names[result.home],
        result.similar,
        {cut.names[p]: found for p, found in result.pairings.items()},
        matched if rule else "",
    )
