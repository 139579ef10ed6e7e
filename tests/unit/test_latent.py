"""The paper's log-likelihood (eq. 2), its inner-product form, and the fixed-ε code."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from atelier.latent import (
    draw_epsilon,
    fixed_eps_code,
    log_likelihood,
    loglik_item_vectors,
    loglik_query_vectors,
)


def _codes(seed=0, nq=5, nb=40, n=16):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(nq, n))
    mu = rng.normal(size=(nb, n))
    sigma = np.exp(rng.normal(scale=0.5, size=(nb, n)))
    return z, mu, sigma


def test_log_likelihood_matches_gaussian_logpdf():
    z, mu, sigma = _codes()
    expected = np.array(
        [
            [norm.logpdf(zq, loc=m, scale=s).sum() for m, s in zip(mu, sigma, strict=True)]
            for zq in z
        ]
    )
    assert np.allclose(log_likelihood(z, mu, sigma), expected, rtol=1e-10, atol=1e-10)


def test_inner_product_form_equals_eq2():
    z, mu, sigma = _codes(seed=1)
    inner = loglik_query_vectors(z) @ loglik_item_vectors(mu, sigma).T
    assert np.allclose(inner, log_likelihood(z, mu, sigma), rtol=1e-9, atol=1e-8)
    assert np.array_equal(
        np.argsort(-inner, axis=1), np.argsort(-log_likelihood(z, mu, sigma), axis=1)
    )


def test_epsilon_is_fixed_by_seed():
    assert np.array_equal(draw_epsilon(16, 7), draw_epsilon(16, 7))
    assert not np.array_equal(draw_epsilon(16, 7), draw_epsilon(16, 8))
    mu, sigma, eps = np.zeros((2, 16)), np.full((2, 16), 2.0), draw_epsilon(16, 7)
    assert np.allclose(fixed_eps_code(mu, sigma, eps), 2.0 * eps[None])
