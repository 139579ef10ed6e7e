"""The visual ranker: real TensorFlow training on tiny simulated data, numpy serving, design, evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.catalogue import read_catalogue_csv
from atelier.personal_eval import (
    Split,
    _auc,
    evaluate_ranking,
    leave_last_out,
    popularity_scorer,
    random_scorer,
    vbpr_scorer,
)
from atelier.preference import (
    CategorySubspace,
    VBPRConfig,
    VisualRanker,
    design_for_user,
    design_in_category,
    popularity_scores,
    train_vbpr,
    training_data,
)
from atelier.simulate import SimulatorParams, simulate

DIM = 8


@pytest.fixture(scope="module")
def dataset(tiny_csv):
    """Simulated users over the tiny catalogue, with stand-in 'codes' that carry the labels the
    simulator's tastes are written in (articleType and colour), plus noise."""
    items = read_catalogue_csv(tiny_csv)
    rng = np.random.default_rng(0)
    types = sorted({i.article_type for i in items})
    colours = sorted({i.colour for i in items})
    type_vec = rng.normal(0, 1.5, (len(types), DIM))
    colour_vec = rng.normal(0, 0.7, (len(colours), DIM))
    codes = np.array(
        [type_vec[types.index(i.article_type)] + colour_vec[colours.index(i.colour)] for i in items]
    ) + rng.normal(0, 0.3, (len(items), DIM))
    sim = simulate(items, SimulatorParams(n_users=400, seed=1, noise=0.05))
    data = training_data(
        ((e.user_id, e.item_id, e.timestamp) for e in sim.events),
        [i.item_id for i in items],
        codes.astype(np.float32),
    )
    return data


@pytest.fixture(scope="module")
def trained(dataset):
    """Leave-last-out, with every training pair on a third of the items dropped: those items are
    'new' (no training interactions), so some test items are cold."""
    split = leave_last_out(dataset)
    new = np.random.default_rng(2).random(len(dataset.item_ids)) < 1 / 3
    split = Split(split.train.subset(~new[split.train.pairs[:, 1]]), split.validation, split.test)
    model = train_vbpr(
        split.train, "vbpr_codes", epochs=40, seed=0, config=VBPRConfig(batch_size=512)
    )
    return split, model


def test_training_data_merges_repeats_and_skips_unknown_items():
    events = [
        ("u1", "a", 5.0),
        ("u1", "a", 3.0),  # the same pair again, earlier: one pair dated 3.0
        ("u1", "b", 4.0, "click"),
        ("u2", "zz", 1.0),  # not in the catalogue
        ("u2", "b", 2.0),
    ]
    data = training_data(events, ["a", "b", "c"], np.zeros((3, 2)))
    assert data.skipped_events == 1
    assert data.user_ids == ["u1", "u2"]
    pairs = {
        (data.user_ids[u], data.item_ids[i]): t
        for (u, i), t in zip(data.pairs, data.timestamps, strict=True)
    }
    assert pairs == {("u1", "a"): 3.0, ("u1", "b"): 4.0, ("u2", "b"): 2.0}
    assert popularity_scores(data).tolist() == [1.0, 2.0, 0.0]


def test_leave_last_out_holds_out_the_two_latest_items(dataset):
    split = leave_last_out(dataset)
    u = int(np.flatnonzero(split.test >= 0)[0])
    mine = dataset.pairs[:, 0] == u
    by_time = dataset.pairs[mine][np.argsort(dataset.timestamps[mine]), 1]
    assert split.test[u] == by_time[-1] and split.validation[u] == by_time[-2]
    kept = split.train.pairs[split.train.pairs[:, 0] == u, 1]
    assert sorted(kept.tolist()) == sorted(by_time[:-2].tolist())
    assert len(split.train.pairs) == len(dataset.pairs) - 2 * int((split.test >= 0).sum())


def test_auc_counts_ties_as_half():
    assert _auc(np.array([1.0]), np.array([[0.0, 1.0, 2.0, 0.5]])).tolist() == [0.625]


def test_vbpr_ranks_better_than_random_and_popularity_including_cold_items(dataset, trained):
    split, model = trained
    scorers = {
        "random": random_scorer(len(dataset.item_ids)),
        "popularity": popularity_scorer(split.train),
        "vbpr_codes": vbpr_scorer(model, split.train, dataset.features),
    }
    result = evaluate_ranking(split, scorers, n_negatives=100)
    auc = result["auc"]
    assert abs(auc["all"]["random"] - 0.5) < 0.05
    assert auc["all"]["vbpr_codes"] > 0.75
    assert auc["all"]["vbpr_codes"] > auc["all"]["popularity"] + 0.05
    assert result["counts"]["cold_test_users"] > 0
    assert auc["cold"]["vbpr_codes"] > 0.65
    assert auc["cold"]["popularity"] == pytest.approx(0.5, abs=0.01)  # all-zero counts: ties


def test_round_trip_is_exact_and_pickle_free(dataset, trained):
    _, model = trained
    data = model.to_bytes()
    again = VisualRanker.from_bytes(data)
    assert again.to_bytes() == data
    assert again.kind == model.kind and again.user_ids == model.user_ids
    user = model.user_ids[0]
    np.testing.assert_array_equal(
        again.scores(user, dataset.features, dataset.item_ids),
        model.scores(user, dataset.features, dataset.item_ids),
    )
    np.load(__import__("io").BytesIO(data), allow_pickle=False)["theta_u"]  # no object arrays


def test_unseen_items_get_only_the_visual_term(dataset, trained):
    _, model = trained
    user = model.user_ids[0]
    features = dataset.features[:5]
    known = model.item_ids[:5]
    unseen = model.scores(user, features, ["new-1", "new-2", "new-3", "new-4", "new-5"])
    np.testing.assert_allclose(unseen, model.visual_scores(user, features), rtol=1e-5, atol=1e-5)
    assert not np.allclose(model.scores(user, features, known), unseen)


def test_unknown_user_is_refused(trained):
    _, model = trained
    assert model.knows_user(model.user_ids[0]) and not model.knows_user("nobody")
    with pytest.raises(KeyError):
        model.scores("nobody", np.zeros((1, DIM)), ["a"])


def test_gradient_matches_finite_differences(dataset, trained):
    _, model = trained
    user = model.user_ids[3]
    code = dataset.features[7].astype(np.float64)
    value, gradient = model.preference_and_gradient(user, code)
    assert value == pytest.approx(
        float(model.visual_scores(user, code[None])[0]), rel=1e-4, abs=1e-4
    )
    h = 1e-5
    numeric = np.array(
        [
            (
                model.preference_and_gradient(user, code + h * e)[0]
                - model.preference_and_gradient(user, code - h * e)[0]
            )
            / (2 * h)
            for e in np.eye(DIM)
        ]
    )
    np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-6)


def test_design_raises_the_score_within_the_box(dataset, trained):
    _, model = trained
    prior_mean = dataset.features.mean(0)
    for user in model.user_ids[:10]:
        design = design_for_user(model, user, prior_mean, prior_mean, steps=100, max_sigma=1.5)
        assert design.score > design.start_score
        assert design.max_abs_sigma <= 1.5 + 1e-9
        assert np.all(np.abs(design.code - prior_mean) <= 1.5 + 1e-5)
        assert design.score == pytest.approx(
            model.preference_and_gradient(user, design.code)[0], rel=1e-4, abs=1e-4
        )


def test_category_subspace_round_trips_its_own_codes():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(DIM, 3)))[0].T  # 3 orthonormal directions
    codes = 5.0 + rng.normal(size=(200, 3)) * [3.0, 1.0, 0.2] @ basis
    subspace = CategorySubspace.fit(codes, explained=0.999)
    assert subspace.directions.shape == (3, DIM)
    np.testing.assert_allclose(subspace.sd, [3.0, 1.0, 0.2], rtol=0.15)
    for code in codes[:5]:
        np.testing.assert_allclose(subspace.code(subspace.coordinates(code)), code, atol=1e-9)


def test_design_in_category_stays_among_the_categorys_variations(dataset, trained):
    _, model = trained
    category = dataset.features[:40]
    subspace = CategorySubspace.fit(category)
    for user in model.user_ids[:10]:
        design = design_in_category(model, user, category, steps=100, max_sigma=2.0)
        assert design.score > design.start_score
        assert design.max_abs_sigma <= 2.0 + 1e-9
        coordinates = subspace.coordinates(design.code)
        assert np.all(np.abs(coordinates) <= 2.0 + 1e-4)
        # Nothing outside the category's span: the code is its mean plus its own directions.
        np.testing.assert_allclose(subspace.code(coordinates), design.code, atol=1e-4)
        assert design.score == pytest.approx(
            model.preference_and_gradient(user, design.code)[0], rel=1e-4, abs=1e-4
        )
