"""Latent-code math: the fixed-ε code, the paper's log-likelihood (eq. 2) and its inner-product form."""

from __future__ import annotations

import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))


# The ranking methods, by the names every layer uses (search, evaluation, the RPC enum's
# RANKING_METHOD_<NAME>, the CLI): the paper's eq. 2, fixed-ε Euclidean, and three baselines
# on μ.
RANKING_METHODS = ("loglik", "fixed_eps", "mu_l2", "cosine", "cityblock")


def draw_epsilon(latent_dim: int, seed: int) -> np.ndarray:
    """The model version's fixed ε ~ N(0, I), drawn once from a seed (the paper's fixed-ε trick)."""
    return np.random.default_rng(seed).standard_normal(latent_dim).astype(np.float32)


def fixed_eps_code(mu: np.ndarray, sigma: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
    """z = μ + σ⊙ε with the model version's single ε."""
    return (np.asarray(mu) + np.asarray(sigma) * np.asarray(epsilon)).astype(np.float32)


def log_likelihood(z: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """log q(z|x) for every query row of z against every item (μ, σ), directly from eq. 2.

    Shapes: z (nq, n), mu and sigma (nb, n); result (nq, nb), float64.
    """
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    diff = z[:, None, :] - mu[None, :, :]
    return np.sum(
        -(diff**2) / (2.0 * sigma[None] ** 2) - np.log(np.sqrt(2.0 * np.pi) * sigma[None]), axis=2
    )


def loglik_query_vectors(z: np.ndarray) -> np.ndarray:
    """[z², z, 1] per query: the query side of eq. 2 as an inner product."""
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    return np.hstack([z**2, z, np.ones((len(z), 1))])


def loglik_item_vectors(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """[−1/(2σ²), μ/σ², −Σ(μ²/(2σ²) + log σ) − (n/2)·log 2π] per item: ⟨query, item⟩ = log q(z|x)."""
    mu = np.asarray(mu, dtype=np.float64)
    variance = np.asarray(sigma, dtype=np.float64) ** 2
    n = mu.shape[1]
    constant = (
        -np.sum(mu**2 / (2.0 * variance) + 0.5 * np.log(variance), axis=1) - 0.5 * n * LOG_2PI
    )
    return np.hstack([-1.0 / (2.0 * variance), mu / variance, constant[:, None]])


def validate_vector(values, latent_dim: int, max_abs: float) -> np.ndarray:
    """A latent vector from outside: right length, finite, inside ±max_abs. Raises ValueError saying why."""
    vector = np.asarray(values, dtype=np.float64).ravel()
    if vector.size != latent_dim:
        raise ValueError(f"latent vector must have {latent_dim} values, got {vector.size}")
    if not np.all(np.isfinite(vector)):
        bad = np.flatnonzero(~np.isfinite(vector)).tolist()
        raise ValueError(f"latent vector must be finite; NaN or inf at positions {bad}")
    if np.any(np.abs(vector) > max_abs):
        worst = int(np.argmax(np.abs(vector)))
        raise ValueError(
            f"latent values must lie within ±{max_abs:g}; position {worst} is {vector[worst]:g}"
        )
    return vector


NON_FINITE_CODE = "the model returned a non-finite code for this image"


def finite_rows(codes: dict[str, np.ndarray]) -> np.ndarray:
    """True for each row (image) whose μ, σ and z are all finite: NaN or inf never leave a service."""
    rows = [np.isfinite(np.asarray(codes[name], dtype=np.float64)) for name in ("mu", "sigma", "z")]
    return np.logical_and.reduce([r.reshape(len(r), -1).all(axis=1) for r in rows])
