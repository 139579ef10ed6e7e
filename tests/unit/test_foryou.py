"""Serving a preference model: the precomputed item side gives the model's own scores, ranking
falls back to popularity for users without history, and designs are compared like for like."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from atelier import foryou
from atelier.personal_store import PreferenceModel
from atelier.preference import VisualRanker

LATENT, HIDDEN, VISUAL, FACTORS = 8, 6, 5, 3


def _ranker(rng, users: list[str], seen: list[str]) -> VisualRanker:
    arrays = {
        "feature_mean": rng.normal(size=LATENT),
        "feature_scale": rng.uniform(0.5, 2.0, size=LATENT),
        "w1": rng.normal(size=(LATENT, HIDDEN)),
        "b1": rng.normal(size=HIDDEN),
        "w2": rng.normal(size=(HIDDEN, VISUAL)),
        "b2": rng.normal(size=VISUAL),
        "theta_u": rng.normal(size=(len(users), VISUAL)),
        "theta_0": rng.normal(size=VISUAL),
        "gamma_u": rng.normal(size=(len(users), FACTORS)),
        "gamma_i": rng.normal(size=(len(seen), FACTORS)),
        "beta_i": rng.normal(size=len(seen)),
    }
    return VisualRanker("vbpr_codes", users, seen, arrays)


@pytest.fixture()
def served():
    rng = np.random.default_rng(3)
    item_ids = [f"i{n}" for n in range(40)]
    mu = rng.normal(size=(40, LATENT)).astype(np.float32)
    seen = item_ids[::3]  # the others have no collaborative terms: cold items
    ranker = _ranker(rng, ["u1", "u2"], seen)
    subs = np.array(["Shoes" if n < 20 else "Bags" for n in range(40)])
    generation = SimpleNamespace(
        version=2,
        codes=SimpleNamespace(item_ids=item_ids, mu=mu),
        row_of={i: n for n, i in enumerate(item_ids)},
        attributes={"sub_category": subs},
    )
    record = PreferenceModel(
        version=7,
        kind="vbpr_codes",
        model_version=2,
        users=2,
        items=len(seen),
        interactions=10,
        trained_at=1.0,
        model=ranker.to_bytes(),
        item_ids=[*seen, "gone"],  # an item the generation no longer holds
        popularity=np.arange(len(seen) + 1, dtype=np.float64),
        top_users=[("u1", 6), ("u2", 4)],
    )
    return foryou.build(record, generation), ranker, mu, item_ids


def test_precomputed_scores_equal_the_models_own(served):
    index, ranker, mu, item_ids = served
    for user in ("u1", "u2"):
        expected = ranker.scores(user, mu, item_ids)
        np.testing.assert_allclose(index.user_scores(user), expected, rtol=1e-5, atol=1e-5)


def test_ranking_is_the_top_k_of_the_models_scores_within_a_pool(served):
    index, ranker, mu, item_ids = served
    expected = ranker.scores("u1", mu, item_ids)
    ranked = index.rank("u1", 5)
    assert ranked.fallback == foryou.NONE
    assert ranked.rows.tolist() == np.argsort(-expected, kind="stable")[:5].tolist()
    pool = np.arange(20, 40)
    within = index.rank("u1", 3, pool)
    assert set(within.rows.tolist()) <= set(pool.tolist())
    assert within.rows.tolist() == (20 + np.argsort(-expected[20:], kind="stable")[:3]).tolist()


def test_a_user_without_history_gets_popularity_and_is_told(served):
    index = served[0]
    ranked = index.rank("stranger", 4)
    assert ranked.fallback == foryou.POPULARITY
    # popularity follows the stored counts; items nobody touched score 0
    seen_rows = list(range(0, 40, 3))
    assert ranked.rows.tolist() == seen_rows[::-1][:4]
    scores, fallback = index.rerank("stranger", ["i3", "missing", "i1"])
    assert fallback == foryou.POPULARITY and scores == [1.0, None, 0.0]
    with pytest.raises(foryou.UnknownUser):
        index.user_scores("stranger")


def test_a_design_beats_the_categorys_best_item_on_the_same_visual_score(served):
    index, ranker, mu, _ = served
    shoes = np.arange(20)
    design = index.design("u1", shoes, None, "Shoes", steps=300, nearest=4)
    visual = ranker.visual_scores("u1", mu[shoes])
    assert design.best_row == int(np.argmax(visual))
    assert design.best_score == pytest.approx(float(visual.max()), rel=1e-5)
    assert design.score == pytest.approx(ranker.preference_and_gradient("u1", design.code)[0])
    assert design.score > design.best_score  # what the test's name says
    assert design.max_abs_sigma <= 3.0 + 1e-6
    distances = np.linalg.norm(mu.astype(np.float64) - design.code, axis=1)
    assert design.nearest_rows.tolist() == np.argsort(distances, kind="stable")[:4].tolist()
    with pytest.raises(foryou.UnknownUser):
        index.design("stranger", shoes, None, "Shoes", steps=5, nearest=1)
