"""Cross-category recommendation by latent arithmetic (the paper's eq. 3).

For a query in partition i: the most similar items in i, and for every other partition j the
items of j nearest to z + (centre_j − centre_i), ranked by any search method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atelier.search import SearchIndex, query_space


@dataclass(frozen=True)
class Recommendation:
    home: int
    similar: tuple[np.ndarray, np.ndarray]  # rows, scores
    pairings: dict[int, tuple[np.ndarray, np.ndarray]]  # partition -> rows, scores


def recommend(
    index: SearchIndex, method: str, query: np.ndarray, k: int, exclude_row: int | None = None
) -> Recommendation:
    partition = index.partitions[query_space(method)]
    query = np.asarray(query, dtype=np.float64)
    home = int(partition.assign(query)[0])
    similar = index.search(method, query, k, [home], exclude_row=exclude_row)
    pairings = {}
    for other in range(len(partition.centres)):
        if other != home:
            shifted = query + (
                partition.centres[other].astype(np.float64) - partition.centres[home]
            )
            pairings[other] = index.search(method, shifted, k, [other], exclude_row=exclude_row)
    return Recommendation(home, similar, pairings)
