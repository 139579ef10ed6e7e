"""Serving a preference model: "for you" rankings, re-ranking given lists, designs for a user.

`ForYou` is everything a request needs about one served preference model: the model, the
generation of codes it was trained on (its items, their μ and metadata), the item side of the
model's score precomputed once, and the popularity fallback. The score (atelier/preference.py) is

    x_ui = β_i + γ_u·γ_i + (θ_u + θ_0)·f(c_i)

with β_i = γ_i = 0 for items without training interactions. With the item side stacked once per
model as A = [γ_i | f(c_i)] (m × (K + D)) and b = β, one user's scores over the whole catalogue
are A·[γ_u | θ_u + θ_0] + b: one matrix-vector product, then argpartition. A user the model does
not know falls back to popularity, and the answer says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atelier.generation import Generation
from atelier.personal_store import PreferenceModel

log = logging.getLogger(__name__)
NONE, POPULARITY = "none", "popularity"
MAX_K = 1000


class UnknownUser(LookupError):
    """The model has no vector for this user (no history when it was trained)."""


@dataclass(frozen=True)
class Ranked:
    rows: np.ndarray  # generation rows, best first
    scores: np.ndarray
    fallback: str  # NONE or POPULARITY


@dataclass(frozen=True)
class DesignResult:
    code: np.ndarray
    score: float
    start_score: float
    steps: int
    max_abs_sigma: float
    category: str
    best_row: int
    best_score: float
    nearest_rows: np.ndarray
    nearest_distances: np.ndarray


@dataclass
class ForYou:
    record: PreferenceModel
    ranker: object  # atelier.preference.VisualRanker
    generation: Generation
    features: np.ndarray  # (m, latent) μ, float32, generation rows
    popularity: np.ndarray  # (m,) per generation row; 0 for items nobody interacted with
    item_side: np.ndarray  # (m, K + D): [γ_i | f(c_i)], float32
    item_bias: np.ndarray  # (m,) β_i
    factors: int  # K: the item side's first K columns are γ_i, the rest f(c_i)
    user_row: dict[str, int]  # the model's users

    @property
    def version(self) -> int:
        return self.record.version

    def knows(self, user_id: str) -> bool:
        return user_id in self.user_row

    def user_scores(self, user_id: str) -> np.ndarray:
        """x_ui for every generation row; UnknownUser when the model has no vector for the user."""
        return self.item_side @ self.user_vector(user_id) + self.item_bias

    def user_vector(self, user_id: str) -> np.ndarray:
        """[γ_u | θ_u + θ_0]; UnknownUser when the model has no vector for the user."""
        row = self.user_row.get(user_id)
        if row is None:
            raise UnknownUser(user_id)
        ranker = self.ranker
        return np.concatenate([ranker.gamma_u[row], ranker.theta_u[row] + ranker.theta_0])

    def scores_for(self, user_id: str) -> tuple[np.ndarray, str]:
        """The user's scores, or popularity (and POPULARITY) for a user with no history."""
        try:
            return self.user_scores(user_id), NONE
        except UnknownUser:
            return self.popularity, POPULARITY

    def rank(self, user_id: str, k: int, rows: np.ndarray | None = None) -> Ranked:
        """Top k of `rows` (default: every item) for the user, best first; ties by row."""
        scores, fallback = self.scores_for(user_id)
        pool = np.arange(len(scores)) if rows is None else np.asarray(rows, dtype=np.int64)
        return Ranked(*top_k(scores, pool, k), fallback)

    def rerank(self, user_id: str, item_ids: Sequence[str]) -> tuple[list[float | None], str]:
        """The user's score of each item id (None for ids this generation lacks)."""
        scores, fallback = self.scores_for(user_id)
        row_of = self.generation.row_of
        return [float(scores[row_of[i]]) if i in row_of else None for i in item_ids], fallback

    def design(
        self,
        user_id: str,
        start_rows: np.ndarray,
        start_row: int | None,
        category: str,
        steps: int,
        nearest: int,
    ) -> DesignResult:
        """Gradient ascent on the user's preference from the category's centre (or an item),
        within the category's own variations (atelier.preference.design_in_category).

        `start_rows` are the category's rows: their codes define where a design may go, and the
        best of them is the catalogue item the design is compared with.
        """
        from atelier.preference import design_in_category

        if not self.knows(user_id):
            raise UnknownUser(user_id)
        start = None if start_row is None else self.features[start_row]
        result = design_in_category(
            self.ranker, user_id, self.features[start_rows], start, steps=steps
        )
        code = np.asarray(result.code, dtype=np.float64)
        # The design is a new item (no β_i, no γ_i): it is compared with the category's best
        # item by the same visual term alone, (θ_u + θ_0)·f(c).
        user = self.user_vector(user_id)
        visual = self.item_side[:, self.factors :] @ user[self.factors :]
        best_rows, best_scores = top_k(visual, start_rows, 1)
        best_row, best_visual = int(best_rows[0]), float(best_scores[0])
        distances = np.linalg.norm(self.features.astype(np.float64) - code, axis=1)
        near = np.argsort(distances, kind="stable")[:nearest]
        return DesignResult(
            code=code,
            score=float(result.score),
            start_score=float(result.start_score),
            steps=int(result.steps),
            max_abs_sigma=float(result.max_abs_sigma),
            category=category,
            best_row=best_row,
            best_score=float(best_visual),
            nearest_rows=near,
            nearest_distances=distances[near],
        )

    def top_users(self, limit: int) -> list[tuple[str, int]]:
        return self.record.top_users[:limit]


def top_k(scores: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows of `pool` by score, best first (ties: lower row first)."""
    if len(pool) == 0:
        return pool, np.zeros(0)
    values = scores[pool]
    k = min(k, len(pool))
    if k < len(pool):
        # The k-th best value decides membership; ties at the boundary go to the lower rows.
        part = np.argpartition(-values, k - 1)[:k]
        threshold = values[part].min()
        candidates = np.flatnonzero(values >= threshold)
    else:
        candidates = np.arange(len(pool))
    order = np.lexsort((pool[candidates], -values[candidates]))[:k]
    chosen = candidates[order]
    return pool[chosen], values[chosen]


def item_side(ranker, features: np.ndarray, item_ids: Sequence[str]):
    """[γ_i | f(c_i)] and β_i for every item (zeros for items without training interactions)."""
    collaborative = {item_id: row for row, item_id in enumerate(ranker.item_ids)}
    rows = np.array([collaborative.get(i, -1) for i in item_ids], dtype=np.int64)
    known = rows >= 0
    gamma = np.zeros((len(item_ids), ranker.gamma_i.shape[1]), np.float32)
    gamma[known] = ranker.gamma_i[rows[known]]
    bias = np.zeros(len(item_ids), np.float32)
    bias[known] = ranker.beta_i[rows[known]]
    side = np.hstack([gamma, ranker.item_embeddings(features).astype(np.float32)])
    return np.ascontiguousarray(side), bias, gamma.shape[1]


def build(record: PreferenceModel, generation: Generation) -> ForYou:
    """Load a stored model over its generation and precompute the item side of its score."""
    from atelier.preference import VisualRanker

    ranker = VisualRanker.from_bytes(record.model)
    features = np.ascontiguousarray(generation.codes.mu, dtype=np.float32)
    popularity = np.zeros(len(features))
    rows = [generation.row_of.get(i) for i in record.item_ids]
    known = np.array([r is not None for r in rows], dtype=bool)
    if known.any():
        popularity[np.array([r for r in rows if r is not None])] = record.popularity[known]
    side, bias, factors = item_side(ranker, features, generation.codes.item_ids)
    log.info(
        "preference model %d (%s) over generation %d: %d items, %d users",
        record.version, record.kind, generation.version, len(features), len(ranker.user_ids),
    )  # fmt: skip
    users = {user_id: row for row, user_id in enumerate(ranker.user_ids)}
    return ForYou(record, ranker, generation, features, popularity, side, bias, factors, users)
