"""A self-contained tour of the model on the shipped sample catalogue: design, find and pair.

Encodes the catalogue with the committed model, clusters it (k-means, k=3), then for one item
writes a contact sheet (the item, its nearest neighbours in its cluster, and one recommendation
row per other cluster by the paper's eq. 3) and a latent traversal strip.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from atelier.catalogue import load_images, read_catalogue_csv
from atelier.clustering import fit_kmeans
from atelier.evaluation import save_grid
from atelier.latent import log_likelihood
from atelier.modelstore import LoadedDecoder, LoadedEncoder

log = logging.getLogger(__name__)


def run_demo(
    catalogue_csv: Path,
    models_dir: Path,
    out_dir: Path,
    item_id: str | None,
    k: int = 3,
    neighbours: int = 8,
    seed: int = 0,
) -> dict:
    encoder = LoadedEncoder(models_dir)
    decoder = LoadedDecoder(models_dir, encoder.metadata.version)
    loaded = load_images(read_catalogue_csv(catalogue_csv), encoder.metadata.image_size)
    codes = encoder.encode(loaded.images)
    partition = fit_kmeans(codes["z"], loaded.ids, k, seed)
    labels, centres = partition.labels, partition.centres
    ids = loaded.ids
    if item_id is None:
        query = int(np.random.default_rng(seed).integers(len(ids)))
    elif item_id in ids:
        query = ids.index(item_id)
    else:
        raise SystemExit(
            f"item {item_id} is not in {catalogue_csv} (or its image could not be used)"
        )
    z_query = codes["z"][query]
    home = int(labels[query])

    def nearest(target: np.ndarray, cluster: int, exclude: int | None) -> np.ndarray:
        members = np.flatnonzero(labels == cluster)
        members = members[members != exclude] if exclude is not None else members
        distance = np.linalg.norm(codes["z"][members] - target, axis=1)
        return members[np.argsort(distance, kind="stable")[:neighbours]]

    similar = nearest(z_query, home, query)
    members = np.flatnonzero(labels == home)
    members = members[members != query]
    loglik = log_likelihood(codes["mu"][query], codes["mu"][members], codes["sigma"][members])[0]
    similar_loglik = members[np.argsort(-loglik, kind="stable")[:neighbours]]
    pairs = {}
    for other in range(k):
        if other != home:
            # The paper's eq. 3: shift the query by the difference of cluster centres.
            pairs[other] = nearest(z_query + (centres[other] - centres[home]), other, None)

    out_dir.mkdir(parents=True, exist_ok=True)
    images = loaded.images
    blank = np.ones_like(images[0])
    rows = [
        np.stack([images[query], decoder.decode(z_query[None])[0], *[blank] * (neighbours - 2)])
    ]
    rows += [images[similar], images[similar_loglik]]
    rows += [images[p] for p in pairs.values()]
    save_grid(rows, out_dir / "tour.png")
    steps = np.linspace(-3, 3, 9)
    spread = codes["mu"].std(axis=0)
    dim = int(np.argmax(spread))
    strip = np.repeat(codes["mu"][query][None], len(steps), axis=0)
    strip[:, dim] = codes["mu"][:, dim].mean() + steps * spread[dim]
    save_grid([decoder.decode(strip.astype(np.float32))], out_dir / "slider.png")

    def describe(index: int) -> str:
        item = loaded.items[index]
        return f"{item.item_id} ({item.category}/{item.article_type})"

    summary = {
        "catalogue": str(catalogue_csv),
        "items": len(ids),
        "skipped": loaded.report.failures,
        "model_version": encoder.metadata.version,
        "query": describe(query),
        "cluster": home,
        "similar_fixed_eps": [describe(i) for i in similar],
        "similar_loglik": [describe(i) for i in similar_loglik],
        "recommendations": {f"cluster {c}": [describe(i) for i in p] for c, p in pairs.items()},
        "images": {
            "tour": str(out_dir / "tour.png"),
            "slider": str(out_dir / "slider.png"),
            "slider_dim": dim,
        },
    }
    return summary
