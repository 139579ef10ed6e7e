"""The design studio's sliders: one per latent dimension, or the leading principal directions.

A slider j moves a code along directions[j]; its value is (code − origin)·directions[j]. With at
most `max_sliders` latent dimensions the basis is the identity (one slider per dimension, the
paper's design); a larger latent gets the principal directions of the codes it is built from,
so each slider follows one of the ways the catalogue really varies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_SLIDERS = 16


@dataclass(frozen=True)
class SliderBasis:
    origin: np.ndarray  # (d,)
    directions: np.ndarray  # (m, d), orthonormal rows
    lower: np.ndarray  # (m,)
    upper: np.ndarray  # (m,)
    labels: tuple[str, ...]
    explained_variance: np.ndarray  # (m,) share of the codes' variance along each direction

    def values(self, code: np.ndarray) -> np.ndarray:
        return (np.asarray(code, np.float64) - self.origin) @ self.directions.T


def slider_basis(mu: np.ndarray, max_sliders: int = MAX_SLIDERS) -> SliderBasis:
    """Sliders for codes `mu` (n, d): bounds are the codes' range along each direction, widened
    by one standard deviation on each side."""
    mu = np.asarray(mu, np.float64)
    n, dim = mu.shape
    if n == 0:
        raise ValueError("slider bounds need at least one code")
    total = float(mu.var(axis=0).sum()) or 1.0
    if dim <= max_sliders:
        origin = np.zeros(dim)
        directions = np.eye(dim)
        labels = tuple(f"z{d}" for d in range(dim))
    else:
        origin = mu.mean(axis=0)
        _, _, vt = np.linalg.svd(mu - origin, full_matrices=False)
        directions = vt[:max_sliders]
        if len(directions) < max_sliders:  # fewer codes than sliders: pad with unit axes
            extra = np.eye(dim)[: max_sliders - len(directions)]
            directions = np.linalg.qr(np.vstack([directions, extra]).T)[0].T[:max_sliders]
        labels = tuple(f"direction {j + 1}" for j in range(len(directions)))
    values = (mu - origin) @ directions.T
    spread = values.std(axis=0)
    return SliderBasis(
        origin=origin,
        directions=directions,
        lower=values.min(axis=0) - spread,
        upper=values.max(axis=0) + spread,
        labels=labels,
        explained_variance=values.var(axis=0) / total,
    )
