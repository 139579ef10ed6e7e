"""A self-contained tour of the model on the shipped sample catalogue: design, find and pair.

Encodes the catalogue with the newest exported model, then for one item writes a contact sheet
(the item and its decoded code, its nearest neighbours in its subCategory by fixed-ε distance
and by log-likelihood, and one complete-the-look row per other subCategory by the paper's eq. 3,
with the gender rule) and a slider strip along its subCategory's leading direction.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from atelier.catalogue import load_images, read_catalogue_csv
from atelier.evaluation import save_grid
from atelier.generation import MASTER, SUB, categorise, index_partitions
from atelier.modelstore import LoadedDecoder, LoadedEncoder
from atelier.recommend import gender_rule, recommend
from atelier.search import CodeSet
from atelier.sliders import slider_basis

log = logging.getLogger(__name__)


def run_demo(
    catalogue_csv: Path,
    models_dir: Path,
    out_dir: Path,
    item_id: str | None,
    neighbours: int = 8,
    seed: int = 0,
) -> dict:
    encoder = LoadedEncoder(models_dir)
    decoder = LoadedDecoder(models_dir, encoder.metadata.version)
    loaded = load_images(read_catalogue_csv(catalogue_csv), encoder.metadata.image_size)
    encoded = encoder.encode(loaded.images)
    codes = CodeSet(loaded.ids, encoded["mu"], encoded["sigma"], encoded["z"])
    categories = categorise(
        codes.mu, loaded.labels("sub_category"), loaded.labels("master_category"), None
    )
    genders = loaded.labels("gender")
    attributes = {SUB: categories.subs, MASTER: categories.masters, "gender": genders}
    by_sub = index_partitions(codes, attributes, categories.master_of)[SUB]
    ids = loaded.ids
    if item_id is None:
        query = int(np.random.default_rng(seed).integers(len(ids)))
    elif item_id in ids:
        query = ids.index(item_id)
    else:
        raise SystemExit(
            f"item {item_id} is not in {catalogue_csv} (or its image could not be used)"
        )
    home = by_sub.position(str(categories.subs[query]))
    assert home is not None
    rule = gender_rule(str(genders[query]))
    own = np.array([query], np.int64)
    look = recommend(by_sub, "fixed_eps", codes.z[query], neighbours, home, None, rule, own)
    by_loglik = by_sub.index.search(
        "loglik", codes.mu[query], neighbours, by_sub.members[home], exclude_rows=own
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    images = loaded.images
    rows = [np.stack([images[query], decoder.decode(codes.z[query][None])[0]])]
    rows += [images[look.similar[0]], images[by_loglik[0]]]
    rows += [images[found[0]] for found in look.pairings.values()]
    save_grid(rows, out_dir / "tour.png")
    basis = slider_basis(codes.mu[categories.subs == categories.subs[query]])
    steps = np.linspace(basis.lower[0], basis.upper[0], 9) - basis.values(codes.mu[query])[0]
    strip = codes.mu[query][None] + np.outer(steps, basis.directions[0])
    save_grid([decoder.decode(strip.astype(np.float32))], out_dir / "slider.png")

    def describe(index: int) -> str:
        item = loaded.items[index]
        return f"{item.item_id} ({item.sub_category}/{item.article_type}, {item.gender})"

    return {
        "catalogue": str(catalogue_csv),
        "items": len(ids),
        "skipped": loaded.report.failures,
        "model_version": encoder.metadata.version,
        "query": describe(query),
        "sub_category": str(categories.subs[query]),
        "similar_fixed_eps": [describe(i) for i in look.similar[0]],
        "similar_loglik": [describe(i) for i in by_loglik[0]],
        "complete_the_look": {
            by_sub.names[p]: [describe(i) for i in found[0]] for p, found in look.pairings.items()
        },
        "images": {"tour": str(out_dir / "tour.png"), "slider": str(out_dir / "slider.png")},
    }
