"""DVBPR's evaluation protocol for the personalisation models, and the design evaluation.

- Leave-last-out per user: a user's last distinct item by time is the test item, the one before
  it the validation item (held out of training, as in DVBPR), the rest is training. Users with
  fewer than three distinct items only train.
- AUC per user over sampled negatives (items the user never interacted with), averaged over
  users. *Warm*: users whose test item has training interactions (from anyone), negatives drawn
  from the whole catalogue. *Cold*: users whose test item has none; negatives drawn from the
  items that have none either, so that a model cannot win by telling seen from unseen items.
  *All*: every test user, negatives from the whole catalogue (DVBPR's "All Items").
- Recall@10 and NDCG@10 of the test item in a ranking of the whole catalogue, without the
  user's training and validation items.
- Ties are broken at random (AUC counts a tie as one half), so a model that cannot tell items
  apart scores like random.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from atelier.preference import (
    MODEL_KINDS,
    CategorySubspace,
    TrainingData,
    VisualRanker,
    design_in_category,
    popularity_scores,
    train_vbpr,
)

log = logging.getLogger(__name__)

Scorer = Callable[[np.ndarray], np.ndarray]  # user rows (b,) -> scores (b, n_items)


@dataclass(frozen=True)
class Split:
    train: TrainingData
    validation: np.ndarray  # (n_users,) item row, -1 for users that only train
    test: np.ndarray  # (n_users,) item row, -1 for users that only train


def leave_last_out(data: TrainingData, min_items: int = 3) -> Split:
    n_users = len(data.user_ids)
    validation = np.full(n_users, -1, np.int64)
    test = np.full(n_users, -1, np.int64)
    keep = np.ones(len(data.pairs), bool)
    # Pairs sorted by user, then time: a user's last two rows are the held-out ones.
    order = np.lexsort((data.timestamps, data.pairs[:, 0]))
    users = data.pairs[order, 0]
    starts = np.searchsorted(users, np.arange(n_users), side="left")
    ends = np.searchsorted(users, np.arange(n_users), side="right")
    for u in range(n_users):
        if ends[u] - starts[u] < min_items:
            continue
        last, before = order[ends[u] - 1], order[ends[u] - 2]
        test[u], validation[u] = data.pairs[last, 1], data.pairs[before, 1]
        keep[last] = keep[before] = False
    return Split(data.subset(keep), validation, test)


def _user_items(data: TrainingData) -> list[set[int]]:
    sets: list[set[int]] = [set() for _ in data.user_ids]
    for u, i in data.pairs:
        sets[u].add(int(i))
    return sets


def _sample_negatives(
    pool: np.ndarray, exclude: list[set[int]], users: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    out = pool[rng.integers(0, len(pool), (len(users), n))]
    for row, u in enumerate(users):
        bad = np.flatnonzero([i in exclude[u] for i in out[row]])
        while len(bad):  # redraw the few that hit the user's own items
            out[row, bad] = pool[rng.integers(0, len(pool), len(bad))]
            bad = bad[[out[row, b] in exclude[u] for b in bad]]
    return out


# --- models ---------------------------------------------------------------------------------


def random_scorer(n_items: int, seed: int = 0) -> Scorer:
    rng = np.random.default_rng(seed)
    return lambda users: rng.random((len(users), n_items), dtype=np.float32)


def popularity_scorer(data: TrainingData) -> Scorer:
    counts = popularity_scores(data).astype(np.float32)
    return lambda users: np.broadcast_to(counts, (len(users), len(counts)))


def train_bpr_mf(data: TrainingData, factors: int = 64, iterations: int = 100, seed: int = 0):
    """BPR-MF from `implicit`: it learns item factors only from interactions, so it has nothing
    to rank items without any."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from scipy.sparse import csr_matrix

    user_items = csr_matrix(
        (np.ones(len(data.pairs), np.float32), (data.pairs[:, 0], data.pairs[:, 1])),
        shape=(len(data.user_ids), len(data.item_ids)),
    )
    model = BayesianPersonalizedRanking(
        factors=factors,
        learning_rate=0.05,
        regularization=0.01,
        iterations=iterations,
        random_state=seed,
        num_threads=1,
    )
    model.fit(user_items, show_progress=False)
    return model


def bpr_mf_scorer(model) -> Scorer:
    users_f = np.asarray(model.user_factors)
    items_f = np.asarray(model.item_factors)
    return lambda users: users_f[users] @ items_f.T


def vbpr_scorer(model: VisualRanker, data: TrainingData, features: np.ndarray) -> Scorer:
    embeddings = model.item_embeddings(features)
    ids = data.user_ids
    return lambda users: model.scores_from_embeddings(
        [ids[u] for u in users], embeddings, data.item_ids
    )


@dataclass
class TrainedModels:
    scorers: dict[str, Scorer]
    visual: dict[str, VisualRanker]
    seconds: dict[str, float]


def train_models(
    train: TrainingData,
    pca_features: np.ndarray,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = False,
    bpr_iterations: int = 100,
) -> TrainedModels:
    """Every kind of MODEL_KINDS trained on the same training pairs."""
    import time

    scorers: dict[str, Scorer] = {}
    visual: dict[str, VisualRanker] = {}
    seconds: dict[str, float] = {}
    scorers["random"] = random_scorer(len(train.item_ids), seed)
    scorers["popularity"] = popularity_scorer(train)
    start = time.perf_counter()
    scorers["bpr_mf"] = bpr_mf_scorer(train_bpr_mf(train, iterations=bpr_iterations, seed=seed))
    seconds["bpr_mf"] = time.perf_counter() - start
    for kind, features in (("vbpr_codes", train.features), ("vbpr_pca", pca_features)):
        data = dataclasses.replace(train, features=np.asarray(features, np.float32))
        start = time.perf_counter()
        visual[kind] = train_vbpr(data, kind, epochs=epochs, seed=seed, progress=progress)
        seconds[kind] = time.perf_counter() - start
        scorers[kind] = vbpr_scorer(visual[kind], data, data.features)
    assert set(scorers) == set(MODEL_KINDS)
    return TrainedModels(scorers, visual, seconds)


# --- ranking metrics ------------------------------------------------------------------------


def _auc(positive: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    return (negatives < positive[:, None]).mean(1) + 0.5 * (negatives == positive[:, None]).mean(1)


def evaluate_ranking(
    split: Split,
    scorers: dict[str, Scorer],
    n_negatives: int = 1000,
    k: int = 10,
    seed: int = 0,
    chunk: int = 256,
    progress: bool = False,
) -> dict:
    """AUC (warm, cold, all), Recall@k and NDCG@k per model, with the counts behind them."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    train = split.train
    n_items = len(train.item_ids)
    users = np.flatnonzero(split.test >= 0)
    if not len(users):
        raise ValueError("no user has enough interactions to hold one out")
    train_counts = popularity_scores(train)
    cold_items = np.flatnonzero(train_counts == 0)
    is_cold = train_counts[split.test[users]] == 0
    seen = _user_items(train)
    everything = [
        s | {int(split.validation[u]), int(split.test[u])} if split.test[u] >= 0 else s
        for u, s in enumerate(seen)
    ]
    negatives_all = _sample_negatives(np.arange(n_items), everything, users, n_negatives, rng)
    negatives_cold = (
        _sample_negatives(cold_items, everything, users, n_negatives, rng)
        if len(cold_items)
        else negatives_all
    )

    results: dict[str, dict[str, np.ndarray]] = {}
    for name, scorer in scorers.items():
        auc_all = np.empty(len(users))
        auc_cold = np.empty(len(users))
        rank = np.empty(len(users))
        tie_rng = np.random.default_rng(seed + 1)
        for start in tqdm(
            range(0, len(users), chunk), desc=f"evaluating {name}", disable=not progress
        ):
            block = users[start : start + chunk]
            scores = np.array(scorer(block), dtype=np.float64)
            rows = np.arange(len(block))
            positive = scores[rows, split.test[block]]
            window = slice(start, start + len(block))
            auc_all[window] = _auc(positive, np.take_along_axis(scores, negatives_all[window], 1))
            auc_cold[window] = _auc(positive, np.take_along_axis(scores, negatives_cold[window], 1))
            for r, u in enumerate(block):  # the user's other known items are not candidates
                held = [i for i in seen[u] | {int(split.validation[u])}]
                scores[r, held] = -np.inf
            greater = (scores > positive[:, None]).sum(1)
            ties = (scores == positive[:, None]).sum(1) - 1
            rank[window] = greater + tie_rng.integers(0, ties + 1)
        hit = rank < k
        results[name] = {
            "auc_all": auc_all,
            "auc_cold": auc_cold,
            "hit": hit,
            "ndcg": np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0),
        }

    def mean(values: np.ndarray, mask: np.ndarray | None = None) -> float:
        chosen = values if mask is None else values[mask]
        return round(float(chosen.mean()), 4) if len(chosen) else float("nan")

    return {
        "auc": {
            "warm": {m: mean(r["auc_all"], ~is_cold) for m, r in results.items()},
            "cold": {m: mean(r["auc_cold"], is_cold) for m, r in results.items()},
            "all": {m: mean(r["auc_all"]) for m, r in results.items()},
        },
        f"recall_at_{k}": {m: mean(r["hit"]) for m, r in results.items()},
        f"ndcg_at_{k}": {m: mean(r["ndcg"]) for m, r in results.items()},
        f"recall_at_{k}_cold": {m: mean(r["hit"], is_cold) for m, r in results.items()},
        "counts": {
            "test_users": len(users),
            "warm_test_users": int((~is_cold).sum()),
            "cold_test_users": int(is_cold.sum()),
            "cold_items": len(cold_items),
            "items": n_items,
            "training_pairs": len(train.pairs),
            "negatives_per_user": n_negatives,
        },
    }


# --- design ---------------------------------------------------------------------------------


def evaluate_design(
    model: VisualRanker,
    user_ids: Sequence[str],
    codes: np.ndarray,
    sub_categories: np.ndarray,
    steps: int = 200,
    max_sigma: float = 3.0,
    progress: bool = False,
    **design_args,
) -> dict:
    """For each user: their best catalogue item by visual preference, and a design in that
    item's subCategory (`design_in_category`, what DesignForUser runs), started from the
    category's mean code. The design beats the item when its visual preference is higher while
    every coordinate stays within max_sigma of the category's prior (its mean and spread along
    its leading directions). Tailoring (DVBPR's second use) starts from the best item itself."""
    from tqdm import tqdm

    embeddings = model.item_embeddings(codes)
    subs = np.asarray(sub_categories)
    beats = []
    tailor_beats = []
    within = []
    uplift = []
    best_in_box = []
    design_spread = []
    item_spread = []
    for user_id in tqdm(user_ids, desc="designing", disable=not progress):
        visual = embeddings @ (model.theta_u[model._user(user_id)] + model.theta_0)
        best = int(np.argmax(visual))
        category_codes = codes[subs == subs[best]]
        design = design_in_category(
            model, user_id, category_codes, steps=steps, max_sigma=max_sigma, **design_args
        )
        tailored = design_in_category(
            model, user_id, category_codes, codes[best], steps, max_sigma, **design_args
        )
        ok = design.max_abs_sigma <= max_sigma + 1e-6
        within.append(ok)
        beats.append(ok and design.score > visual[best])
        tailor_beats.append(
            tailored.max_abs_sigma <= max_sigma + 1e-6 and tailored.score > visual[best]
        )
        uplift.append(design.score - float(visual[best]))
        subspace = CategorySubspace.fit(category_codes)
        best_coordinates = np.abs(subspace.coordinates(codes[best]))
        best_in_box.append(bool(np.all(best_coordinates <= max_sigma)))
        design_spread.append(float(np.mean(np.abs(subspace.coordinates(design.code)))))
        item_spread.append(float(np.mean(best_coordinates)) if len(best_coordinates) else 0.0)
    return {
        "beats_best_item_share": round(float(np.mean(beats)), 4),
        "within_prior_share": round(float(np.mean(within)), 4),
        "tailored_beats_best_item_share": round(float(np.mean(tailor_beats)), 4),
        "median_score_minus_best_item": round(float(np.median(uplift)), 4),
        "best_item_within_box_share": round(float(np.mean(best_in_box)), 4),
        # How far designs go from the category's mean (in its σ, per leading direction), next
        # to the users' best catalogue items.
        "design_mean_abs_sigma": round(float(np.mean(design_spread)), 4),
        "best_item_mean_abs_sigma": round(float(np.mean(item_spread)), 4),
        "users": len(user_ids),
        "steps": steps,
        "max_sigma": max_sigma,
    }
