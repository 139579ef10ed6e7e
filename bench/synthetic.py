"""Synthetic catalogues at any size, drawn from a Gaussian mixture fitted to the real codes.

The scale benchmark (bench/scale.py) needs millions of codes whose cluster sizes and distances
look like the real catalogue's, not uniform noise: a search's cost and an IVF index's recall both
depend on how the codes crowd together. So:

- `real_codes` encodes the real catalogue with the exported model (μ and σ per item, with its
  labels), cached under .cache/scale/ by catalogue file, model version and training-data hash;
- `fit_mixture` fits, per subCategory, a Gaussian mixture over [μ, log σ] (full covariances by
  default: the codes' dimensions are correlated, and diagonal components spread the items ~50%
  further from their nearest neighbours than the real codes are; one component per
  `items_per_component` items, at most `max_components`), so every component
  carries its subCategory and masterCategory, weighted by its share of the catalogue, with the
  empirical distribution of the other labels (gender, articleType, colour, usage, season) among
  the real items it claims;
- `Mixture.sample(first, count)` draws items first .. first + count − 1: μ and log σ from the
  item's component, z = μ + σ ⊙ ε with the model's fixed ε, and labels from the component's
  distributions. Items are drawn in blocks of SAMPLE_BLOCK seeded by (seed, block), so an item is
  the same whatever chunks a caller asks for, and no more than one chunk is ever held.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.synthetic")
ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BLOCK = 50_000
LABELS = ("gender", "article_type", "colour", "usage", "season")
MIN_STD = 1e-3  # a component's every dimension still varies a little


@dataclass(frozen=True)
class RealCodes:
    """The real catalogue's codes with the labels the services partition and filter by."""

    item_ids: list[str]
    mu: np.ndarray  # (n, d) float32
    sigma: np.ndarray  # (n, d) float32
    labels: dict[str, np.ndarray]  # sub_category, master_category and LABELS, one str per item


@dataclass(frozen=True)
class SyntheticItems:
    item_ids: list[str]
    mu: np.ndarray
    sigma: np.ndarray
    z: np.ndarray
    metadata: list[dict[str, str]]
    component: np.ndarray  # the mixture component each item was drawn from

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Mixture:
    """Components over [μ, log σ] with their categories and label distributions."""

    weights: np.ndarray  # (c,), sums to 1
    means: np.ndarray  # (c, 2d)
    scales: np.ndarray  # (c, 2d, 2d) lower-triangular: a draw is mean + scale @ N(0, I)
    sub_category: list[str]
    master_category: list[str]
    label_values: dict[str, list[str]]  # label -> its values
    label_cumulative: dict[str, np.ndarray]  # label -> (c, values) cumulative probabilities
    epsilon: np.ndarray  # (d,) the model's fixed ε
    seed: int = 0
    prefix: str = "s"

    @property
    def latent_dim(self) -> int:
        return int(self.epsilon.shape[0])

    @property
    def components(self) -> int:
        return len(self.weights)

    def sample(self, first: int, count: int) -> SyntheticItems:
        """Items first .. first + count − 1 of this mixture's (endless) catalogue."""
        if first < 0 or count < 0:
            raise ValueError("first and count must be >= 0")
        parts = []
        block = first // SAMPLE_BLOCK
        while block * SAMPLE_BLOCK < first + count:
            drawn = self._block(block)
            lo = max(first, block * SAMPLE_BLOCK) - block * SAMPLE_BLOCK
            hi = min(first + count, (block + 1) * SAMPLE_BLOCK) - block * SAMPLE_BLOCK
            parts.append(tuple(part[lo:hi] for part in drawn))
            block += 1
        d = self.latent_dim
        if not parts:
            empty = np.zeros((0, d), np.float32)
            return SyntheticItems([], empty, empty, empty, [], np.zeros(0, np.int64))
        mu, sigma, component = (np.concatenate([p[i] for p in parts]) for i in range(3))
        label_rows = {
            name: np.concatenate([p[3 + i] for p in parts]) for i, name in enumerate(LABELS)
        }
        z = mu + sigma * self.epsilon[None, :]
        metadata = self._metadata(component, label_rows)
        ids = [f"{self.prefix}{i:08d}" for i in range(first, first + count)]
        return SyntheticItems(ids, mu, sigma, z.astype(np.float32), metadata, component)

    def _block(self, block: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([self.seed, block])
        component = rng.choice(self.components, size=SAMPLE_BLOCK, p=self.weights)
        d = self.latent_dim
        noise = rng.standard_normal((SAMPLE_BLOCK, 2 * d), dtype=np.float32)
        drawn = np.empty_like(noise)
        for c in np.unique(component):
            rows = component == c
            drawn[rows] = self.means[c] + noise[rows] @ self.scales[c].T
        mu = np.ascontiguousarray(drawn[:, :d], np.float32)
        sigma = np.exp(drawn[:, d:]).astype(np.float32)
        labels = []
        for name in LABELS:
            cumulative = self.label_cumulative[name][component]
            u = rng.random((SAMPLE_BLOCK, 1))
            chosen = (cumulative < u).sum(axis=1)
            labels.append(np.minimum(chosen, cumulative.shape[1] - 1))
        return (mu, sigma, component, *labels)

    def _metadata(
        self, component: np.ndarray, label_rows: dict[str, np.ndarray]
    ) -> list[dict[str, str]]:
        values = {name: self.label_values[name] for name in LABELS}
        rows = zip(component.tolist(), *(label_rows[n].tolist() for n in LABELS), strict=True)
        out = []
        for c, gender, article, colour, usage, season in rows:
            g, a, col = (
                values["gender"][gender],
                values["article_type"][article],
                values["colour"][colour],
            )
            out.append(
                {
                    "sub_category": self.sub_category[c],
                    "master_category": self.master_category[c],
                    "gender": g,
                    "article_type": a,
                    "colour": col,
                    "usage": values["usage"][usage],
                    "season": values["season"][season],
                    # About as long as the catalogue's product names (metadata is stored per item).
                    "name": f"Synthetic {g} {col} {a}",
                }
            )
        return out


def fit_mixture(
    real: RealCodes,
    epsilon: np.ndarray,
    seed: int = 0,
    items_per_component: int = 500,
    max_components: int = 8,
    covariance: str = "full",
) -> Mixture:
    """Per subCategory, a Gaussian mixture over [μ, log σ] of its real items (`covariance`:
    "full" or "diag")."""
    from sklearn.mixture import GaussianMixture

    if covariance not in ("full", "diag"):
        raise ValueError(f"covariance must be full or diag, got {covariance!r}")

    features = np.hstack([real.mu, np.log(np.maximum(real.sigma, 1e-12))]).astype(np.float64)
    subs = real.labels["sub_category"]
    masters = real.labels["master_category"]
    values = {name: sorted(set(real.labels[name].tolist())) for name in LABELS}
    codes = {name: np.searchsorted(np.array(values[name]), real.labels[name]) for name in LABELS}
    weights, means, scales, sub_names, master_names = [], [], [], [], []
    probabilities: dict[str, list[np.ndarray]] = {name: [] for name in LABELS}
    global_std = features.std(axis=0)
    for sub in sorted(set(subs.tolist())):
        rows = np.flatnonzero(subs == sub)
        master = Counter(masters[rows].tolist()).most_common(1)[0][0]
        count = min(max_components, max(1, len(rows) // items_per_component))
        # Full covariances need a few items per dimension; fewer fall back to diagonal ones.
        kind = covariance if len(rows) >= 4 * features.shape[1] * count else "diag"
        if len(rows) >= 2 * count and len(rows) >= 2:
            model = GaussianMixture(
                count, covariance_type=kind, reg_covar=1e-3, random_state=seed, max_iter=200
            ).fit(features[rows])
            assigned = model.predict(features[rows])
            part_weights, part_means = model.weights_, model.means_
            if kind == "full":
                part_scales = np.linalg.cholesky(model.covariances_)
            else:
                part_scales = np.stack(
                    [np.diag(np.maximum(np.sqrt(v), MIN_STD)) for v in model.covariances_]
                )
        else:  # a handful of items: one component, spread no tighter than a tenth of the catalogue's
            assigned = np.zeros(len(rows), np.int64)
            part_weights = np.ones(1)
            part_means = features[rows].mean(axis=0, keepdims=True)
            part_scales = np.diag(np.maximum(features[rows].std(axis=0), 0.1 * global_std))[None]
        share = len(rows) / len(subs)
        for c in range(len(part_weights)):
            members = rows[assigned == c]
            if len(members) == 0:  # a component EM left empty: label it like its subCategory
                members = rows
            weights.append(share * part_weights[c])
            means.append(part_means[c])
            scales.append(part_scales[c])
            sub_names.append(sub)
            master_names.append(master)
            for name in LABELS:
                counts = np.bincount(codes[name][members], minlength=len(values[name]))
                probabilities[name].append(counts / counts.sum())
    weights_array = np.asarray(weights, np.float64)
    return Mixture(
        weights=weights_array / weights_array.sum(),
        means=np.asarray(means, np.float32),
        scales=np.asarray(scales, np.float32),
        sub_category=sub_names,
        master_category=master_names,
        label_values=values,
        label_cumulative={
            name: np.cumsum(np.asarray(p), axis=1) for name, p in probabilities.items()
        },
        epsilon=np.asarray(epsilon, np.float32),
        seed=seed,
    )


def with_seed(mixture: Mixture, seed: int, prefix: str) -> Mixture:
    """The same mixture drawing other items (held-out queries), with other ids."""
    from dataclasses import replace

    return replace(mixture, seed=seed, prefix=prefix)


def real_codes(
    csv_path: Path, models_dir: Path, cache_dir: Path = ROOT / ".cache" / "scale"
) -> RealCodes:
    """The real catalogue encoded by the newest exported model: μ, σ and labels per item.

    Images are loaded and encoded in batches (the whole catalogue's pixels would be 2.4 GB);
    the result is cached by catalogue file, model version and its training-data hash."""
    from atelier.catalogue import read_catalogue_csv
    from atelier.modelinfo import read_metadata

    metadata = read_metadata(models_dir)
    stat = csv_path.stat()
    key = hashlib.sha256(
        f"{csv_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{metadata.version}|"
        f"{metadata.data_hash}".encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"codes-{key}.npz"
    names = ("sub_category", "master_category", *LABELS)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as archive:
            log.info("real codes from %s", cache)
            return RealCodes(
                archive["ids"].tolist(),
                archive["mu"],
                archive["sigma"],
                {name: archive[name].astype(str) for name in names},
            )
    from atelier.catalogue import load_images
    from atelier.modelstore import LoadedEncoder

    items = read_catalogue_csv(csv_path)
    encoder = LoadedEncoder(models_dir, metadata.version)
    ids: list[str] = []
    labels: dict[str, list[str]] = {name: [] for name in names}
    mus, sigmas = [], []
    step = 4096
    for start in range(0, len(items), step):
        loaded = load_images(items[start : start + step], metadata.image_size, progress=False)
        encoded = encoder.encode(loaded.images)
        mus.append(encoded["mu"])
        sigmas.append(encoded["sigma"])
        ids += loaded.ids
        for item in loaded.items:
            for name in names:
                labels[name].append(getattr(item, name))
        log.info("encoded %d of %d catalogue items", min(len(items), start + step), len(items))
    real = RealCodes(
        ids,
        np.concatenate(mus).astype(np.float32),
        np.concatenate(sigmas).astype(np.float32),
        {name: np.array(values, dtype=str) for name, values in labels.items()},
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".tmp.npz")
    np.savez(partial, ids=np.array(ids), mu=real.mu, sigma=real.sigma, **real.labels)
    partial.replace(cache)
    return real


def realism(real: RealCodes, mixture: Mixture, probes: int = 500) -> dict:
    """How the synthetic codes compare with the real ones at the real catalogue's size: the mean
    distance from an item's z to its nearest neighbour's, and the largest subCategory's share."""
    import faiss

    def nearest(z: np.ndarray) -> float:
        index = faiss.IndexFlatL2(z.shape[1])
        index.add(z)
        step = max(1, len(z) // probes)
        distances, _ = index.search(z[::step], 2)
        return round(float(np.sqrt(np.maximum(distances[:, 1], 0)).mean()), 3)

    drawn = mixture.sample(0, len(real.item_ids))
    real_z = (real.mu + real.sigma * mixture.epsilon[None, :]).astype(np.float32)
    real_top = Counter(real.labels["sub_category"].tolist()).most_common(1)[0]
    drawn_top = Counter(m["sub_category"] for m in drawn.metadata).most_common(1)[0]
    return {
        "nearest_neighbour_distance_real": nearest(real_z),
        "nearest_neighbour_distance_synthetic": nearest(drawn.z),
        "largest_sub_category": real_top[0],
        "largest_share_real": round(real_top[1] / len(real.item_ids), 4),
        "largest_share_synthetic": round(drawn_top[1] / len(drawn), 4)
        if drawn_top[0] == real_top[0]
        else 0.0,
    }
