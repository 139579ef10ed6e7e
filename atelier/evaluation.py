"""The evaluation: reconstruction, category prediction, retrieval mAP, pairing coherence, clustering.

Two protocols, each written to its own section of docs/results.json:

- `whole_catalogue`: every product family; queries drawn in proportion to the catalogue (a
  natural sample) and per family; baselines PCA-16 and the plain VAE on the same queries.
- `paper_protocol`: the paper's three families (Footwear, Bags, Eyewear), its k=3 clustering
  tables (scored on the test split) and its family-relevance mAP table.

Rendering the Markdown lives in atelier.results_markdown.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.metrics import f1_score
from tqdm import tqdm

from atelier.catalogue import PreparedDataset, SplitSpec
from atelier.categories import CategoryPredictor
from atelier.clustering import fit_kmeans
from atelier.latent import RANKING_METHODS, log_likelihood
from atelier.metrics import mean_average_precision, per_class_scores
from atelier.recommend import genders_compatible
from atelier.taxonomy import MIN_SUBCATEGORY_IMAGES

log = logging.getLogger(__name__)

KS = (10, 25, 50, 500)
METHODS = RANKING_METHODS
HEADLINE_METHOD = "fixed_eps"  # the services' default ranking
PAPER_CLUSTER_F1 = {"Bags": 0.81, "Footwear": 0.98, "Eyewear": 0.70}
PAPER_SAME_CLUSTER_FIXED_EPS_MAP10 = 0.953


class SplitMismatch(ValueError):
    """The data or split differs from the one a model was trained on: queries could be training items."""


@dataclass
class Codes:
    mu: np.ndarray
    sigma: np.ndarray | None
    z: np.ndarray  # fixed-ε code (== mu for deterministic baselines)

    def space(self, method: str) -> np.ndarray:
        return self.z if method == "fixed_eps" else self.mu


@dataclass(frozen=True)
class EvaluationInputs:
    models_dir: Path
    version: int | None
    docs_dir: Path
    baseline_runs: dict[str, Path] = field(default_factory=dict)  # name -> training run dir
    queries: int = 3000  # natural sample (whole catalogue)
    queries_per_family: int = 500
    pairing_queries: int = 1000
    seed: int = 0
    command: str = ""


def check_split(dataset: PreparedDataset, split: dict | None, data_hash: str, what: str) -> None:
    """Refuse to evaluate a model on data or a split other than its own."""
    if split is None:
        raise SplitMismatch(
            f"{what} records no split parameters, so its training items cannot be told apart"
        )
    if SplitSpec.from_dict(split) != dataset.split:
        raise SplitMismatch(
            f"{what} was trained with split {split}, not {dataset.split.to_dict()}; "
            "evaluate with the same --families, --test-fraction and --split-seed"
        )
    if data_hash != dataset.fingerprint:
        raise SplitMismatch(
            f"{what} was trained on data {data_hash}, but this catalogue and split hash to "
            f"{dataset.fingerprint}"
        )


# --- scores -------------------------------------------------------------------------------


def reconstruction_scores(original: np.ndarray, reconstructed: np.ndarray) -> dict[str, float]:
    per_image_mse = np.mean((original - reconstructed) ** 2, axis=(1, 2, 3))
    psnr = 10.0 * np.log10(1.0 / np.maximum(per_image_mse, 1e-12))
    return {"mse": float(per_image_mse.mean()), "psnr": float(psnr.mean())}


def _squared_l2(xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    return (xq**2).sum(1)[:, None] - 2.0 * xq @ xb.T + (xb**2).sum(1)[None, :]


def similarity(method: str, query_index: np.ndarray, codes: Codes) -> np.ndarray:
    """Similarity (higher is better) of each query item against every catalogue item."""
    if method == "loglik":
        if codes.sigma is None:
            raise ValueError("log-likelihood needs σ")
        return log_likelihood(codes.mu[query_index], codes.mu, codes.sigma)
    base = codes.space(method).astype(np.float64)
    query = base[query_index]
    if method in ("fixed_eps", "mu_l2"):
        return -_squared_l2(query, base)
    if method == "cosine":
        base = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
        query = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
        return query @ base.T
    if method == "cityblock":
        return -np.abs(query[:, None, :] - base[None, :, :]).sum(axis=2)
    raise ValueError(f"unknown method {method}")


def retrieval_grid(
    codes: Codes,
    query_index: np.ndarray,
    relevance: dict[str, np.ndarray],
    scopes: dict[str, np.ndarray | None],
    methods: tuple[str, ...] = METHODS,
    ks: tuple[int, ...] = KS,
    chunk: int = 64,
) -> dict:
    """mAP@k for every relevance × scope × method: {relevance: {scope: {method: {k: mAP}}}}.

    A scope is None (the whole catalogue) or a label per item: each query then searches only
    the items that share its label. The query itself is never a result. R, the number of
    relevant items, is counted over the whole catalogue, so a scope that hides relevant items
    is penalised.
    """
    n = len(next(iter(relevance.values())))
    depth = min(max(ks), n - 1)
    relevant_counts = {}
    for name, labels in relevance.items():
        values, counts = np.unique(labels, return_counts=True)
        total = dict(zip(values.tolist(), counts.tolist(), strict=True))
        relevant_counts[name] = [total[labels[q]] - 1 for q in query_index]
    ranked: dict[tuple[str, str, str], list[np.ndarray]] = {}
    for method in methods:
        for start in range(0, len(query_index), chunk):
            batch = query_index[start : start + chunk]
            scores = similarity(method, batch, codes)
            scores[np.arange(len(batch)), batch] = -np.inf
            for scope, partition in scopes.items():
                scoped = scores
                if partition is not None:
                    scoped = scores.copy()
                    scoped[partition[None, :] != partition[batch][:, None]] = -np.inf
                top = np.argpartition(-scoped, depth - 1, axis=1)[:, :depth]
                for row, q in enumerate(batch):
                    order = top[row][np.argsort(-scoped[row, top[row]], kind="stable")]
                    order = order[np.isfinite(scoped[row, order])]
                    for name, labels in relevance.items():
                        ranked.setdefault((name, scope, method), []).append(
                            labels[order] == labels[q]
                        )
    grid: dict = {}
    for (name, scope, method), lists in ranked.items():
        grid.setdefault(name, {}).setdefault(scope, {})[method] = mean_average_precision(
            lists, relevant_counts[name], ks
        )
    return grid


def natural_sample(is_test: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Test items drawn uniformly at random: each family in proportion to the catalogue."""
    candidates = np.flatnonzero(is_test)
    chosen = np.random.default_rng(seed).choice(
        candidates, min(count, len(candidates)), replace=False
    )
    return np.sort(chosen)


def sample_queries(
    families: np.ndarray, is_test: np.ndarray, per_family: int, seed: int
) -> np.ndarray:
    """Up to `per_family` test items of every family (the paper's protocol, and per-family reports)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for family in sorted(set(families.tolist())):
        candidates = np.flatnonzero(is_test & (families == family))
        chosen.append(
            np.sort(rng.choice(candidates, min(per_family, len(candidates)), replace=False))
        )
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def per_family_map(
    codes: Codes,
    method: str,
    families: np.ndarray,
    article_types: np.ndarray,
    is_test: np.ndarray,
    per_family: int,
    seed: int,
) -> dict:
    """articleType mAP@10 for each family's own test queries, and the macro average over the
    families with more than one articleType (a single-type family scores 1.0 by construction)."""
    queries = sample_queries(families, is_test, per_family, seed)
    by_family: dict[str, dict] = {}
    for family in sorted(set(families[queries].tolist())):
        mine = queries[families[queries] == family]
        grid = retrieval_grid(
            codes, mine, {"article_type": article_types}, {"full": None}, (method,), (10,)
        )
        by_family[family] = {
            "queries": len(mine),
            "article_types": len(set(article_types[families == family].tolist())),
            "article_type_map10": grid["article_type"]["full"][method]["10"],
        }
    multi = [v["article_type_map10"] for v in by_family.values() if v["article_types"] > 1]
    return {
        "method": method,
        "families": by_family,
        "macro_map10_multi_type": float(np.mean(multi)) if multi else float("nan"),
        "macro_families": sum(v["article_types"] > 1 for v in by_family.values()),
    }


def classification_scores(
    train_vectors: np.ndarray,
    train_labels: np.ndarray,
    test_vectors: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
) -> dict:
    """Accuracy and macro F1 of the category probe (atelier.categories) on unseen items."""
    predictor = CategoryPredictor.fit(train_vectors, train_labels, seed)
    predicted = predictor.predict(test_vectors)
    classes = sorted(set(test_labels.tolist()))
    per_class = f1_score(test_labels, predicted.labels, labels=classes, average=None)
    return {
        "accuracy": float(np.mean(predicted.labels == test_labels)),
        "macro_f1": float(f1_score(test_labels, predicted.labels, average="macro")),
        "test_items": len(test_labels),
        "mean_confidence": float(predicted.confidence.mean()),
        "per_class_f1": {
            c: {"f1": float(f), "support": int((test_labels == c).sum())}
            for c, f in zip(classes, per_class, strict=True)
        },
    }


def pairing_coherence(
    vectors: np.ndarray,
    partition: np.ndarray,
    query_index: np.ndarray,
    genders: np.ndarray,
    usages: np.ndarray,
    targets: tuple[str, ...],
    k: int = 10,
    seed: int = 0,
) -> dict:
    """Eq. 3 pairings for every query and every other target category, with the gender rule on
    and off; the share of paired items whose gender and usage match the query's, beside random
    items of the same target category drawn in the same run."""
    rng = np.random.default_rng(seed)
    vectors = np.asarray(vectors, np.float64)
    centres = {name: vectors[partition == name].mean(axis=0) for name in set(partition.tolist())}
    tallies = {
        key: [0, 0]
        for key in (
            "gender",
            "usage",
            "free_gender",
            "free_usage",
            "random_gender",
            "random_usage",
            "random_filtered_usage",
        )
    }

    def tally(key: str, hits: np.ndarray) -> None:
        tallies[key][0] += int(hits.sum())
        tallies[key][1] += len(hits)

    lists = 0
    for target in targets:
        members = np.flatnonzero(partition == target)
        if len(members) < k:
            continue
        base = vectors[members]
        for q in query_index:
            home = partition[q]
            if home == target:
                continue
            shifted = vectors[q] + (centres[target] - centres[home])
            distance = ((base - shifted) ** 2).sum(axis=1)
            compatible = genders_compatible(genders[q], genders[members])
            same_usage = usages[members] == usages[q]
            free = np.argsort(distance, kind="stable")[:k]
            tally("free_gender", compatible[free])
            tally("free_usage", same_usage[free])
            allowed = np.flatnonzero(compatible)
            if len(allowed):
                chosen = allowed[np.argsort(distance[allowed], kind="stable")[:k]]
                tally("gender", compatible[chosen])
                tally("usage", same_usage[chosen])
                tally("random_filtered_usage", same_usage[rng.choice(allowed, k)])
            random_items = rng.choice(len(members), k)
            tally("random_gender", compatible[random_items])
            tally("random_usage", same_usage[random_items])
            lists += 1
    share = {key: hits / max(total, 1) for key, (hits, total) in tallies.items()}
    return {
        "gender_filter": True,
        "gender_match": share["gender"],
        "usage_match": share["usage"],
        "random_gender_match": share["random_gender"],
        "random_usage_match": share["random_usage"],
        "random_filtered_usage_match": share["random_filtered_usage"],
        "without_gender_filter": {
            "gender_match": share["free_gender"],
            "usage_match": share["free_usage"],
            "random_gender_match": share["random_gender"],
            "random_usage_match": share["random_usage"],
        },
        "queries": len(query_index),
        "pair_lists": lists,
        "k": k,
        "targets": list(targets),
    }


# --- encoding -----------------------------------------------------------------------------


def codes_from_run(run_dir: Path, images: np.ndarray, epsilon: np.ndarray) -> tuple[Codes, object]:
    """μ/σ/z (and the model) from a training run's latest checkpoint."""
    import tensorflow as tf

    from atelier.modelinfo import ModelConfig
    from atelier.vae import Autoencoder

    saved = json.loads((Path(run_dir) / "config.json").read_text())
    model = Autoencoder(ModelConfig.from_dict(saved["model"]))
    checkpoint = tf.train.Checkpoint(encoder=model.encoder, decoder=model.decoder)
    latest = tf.train.latest_checkpoint(str(Path(run_dir) / "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    checkpoint.restore(latest).expect_partial()
    mus, sigmas = [], []
    for start in range(0, len(images), 256):
        out = model.encoder(images[start : start + 256], training=False)
        if model.config.variational:
            mus.append(out[0].numpy())
            sigmas.append(np.exp(0.5 * out[1].numpy()))
        else:
            mus.append(np.asarray(out))
    mu = np.concatenate(mus)
    if not model.config.variational:
        return Codes(mu, None, mu), model
    sigma = np.concatenate(sigmas)
    epsilon = epsilon[: mu.shape[1]] if len(epsilon) >= mu.shape[1] else epsilon
    return Codes(mu, sigma, mu + sigma * epsilon), model


def run_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no summary.json: its training has not finished")
    return json.loads(path.read_text())


def decode_with(model, z: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [model.decoder(z[s : s + 256], training=False).numpy() for s in range(0, len(z), 256)]
    )


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_grid(rows: list[np.ndarray], path: Path, scale: int = 2) -> None:
    """Rows of equally sized images -> one PNG (each row is (n, H, W, 3) in [0, 1]); short rows
    are padded with white."""
    width = max(len(row) for row in rows)
    padded = [
        np.concatenate([row, np.ones((width - len(row), *row.shape[1:]), row.dtype)])
        if len(row) < width
        else row
        for row in rows
    ]
    strips = [np.concatenate(list(_to_uint8(row)), axis=1) for row in padded]
    picture = Image.fromarray(np.concatenate(strips, axis=0))
    picture = picture.resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


@dataclass
class EncodedModels:
    """The exported model's codes and decoder, the baselines' codes, and their reconstructions."""

    metadata: object
    codes: dict[str, Codes]
    reconstruction: dict[str, dict[str, float]]
    decode: Callable[[np.ndarray], np.ndarray]
    recon_rows: list[np.ndarray]


def encode_all(dataset: PreparedDataset, inputs: EvaluationInputs) -> EncodedModels:
    """Encode every image with the exported model, PCA and each baseline run; score
    reconstruction on the test split. Refuses models trained on another split."""
    from atelier.modelstore import LoadedDecoder, LoadedEncoder

    images = dataset.catalogue.images
    is_test = dataset.is_test
    encoder = LoadedEncoder(inputs.models_dir, inputs.version)
    decoder = LoadedDecoder(inputs.models_dir, encoder.metadata.version)
    metadata = encoder.metadata
    check_split(
        dataset, metadata.extra.get("split"), metadata.data_hash, f"model {metadata.version}"
    )
    log.info("encoding %d images", len(images))
    encoded = encoder.encode(images)
    codes = {"vae": Codes(encoded["mu"], encoded["sigma"], encoded["z"])}
    test_images = images[is_test]
    vae_recon = decoder.decode(codes["vae"].mu[is_test])
    reconstruction = {"vae": reconstruction_scores(test_images, vae_recon)}
    rows = [test_images, vae_recon]
    flat = images.reshape(len(images), -1)
    for dims in sorted({16, metadata.latent_dim}):
        pca = PCA(n_components=dims, random_state=inputs.seed).fit(flat[~is_test])
        pca_codes = pca.transform(flat).astype(np.float32)
        pca_recon = np.clip(
            pca.inverse_transform(pca_codes[is_test]).reshape(test_images.shape), 0, 1
        )
        name = f"pca{dims}"
        reconstruction[name] = reconstruction_scores(test_images, pca_recon)
        codes[name] = Codes(pca_codes, None, pca_codes)
        if dims == 16:
            rows.append(pca_recon)
    for name, run_dir in inputs.baseline_runs.items():
        summary = run_summary(run_dir)
        check_split(
            dataset, summary.get("data", {}).get("split"), summary.get("data_hash", ""), name
        )
        baseline, model = codes_from_run(run_dir, images, metadata.epsilon)
        codes[name] = baseline
        baseline_recon = decode_with(model, baseline.mu[is_test])
        reconstruction[name] = reconstruction_scores(test_images, baseline_recon)
        rows.append(baseline_recon)
    return EncodedModels(metadata, codes, reconstruction, decoder.decode, rows)


def _methods_for(codes: Codes) -> tuple[str, ...]:
    return METHODS if codes.sigma is not None else ("mu_l2", "cosine", "cityblock")


def _model_description(metadata) -> dict:
    return {
        "version": metadata.version,
        "config": metadata.config.to_dict(),
        "training": metadata.extra.get("training", {}),
        "split": metadata.extra.get("split"),
        "data_hash": metadata.data_hash,
    }


def _data_description(dataset: PreparedDataset) -> dict:
    return {k: v for k, v in dataset.description.items() if k != "skipped_ids"} | {
        "data_hash": dataset.fingerprint,
        "skipped_ids": dataset.description["skipped_ids"],
    }


# --- the whole catalogue ------------------------------------------------------------------


def evaluate_whole_catalogue(dataset: PreparedDataset, inputs: EvaluationInputs) -> dict:
    started = time.perf_counter()
    models = encode_all(dataset, inputs)
    is_test = dataset.is_test
    subs = dataset.labels("sub_category")
    masters = dataset.labels("master_category")
    articles = dataset.labels("article_type")
    genders, usages = dataset.labels("gender"), dataset.labels("usage")
    metadata = models.metadata
    figures = inputs.docs_dir / "figures"
    picks = _figure_picks(is_test, inputs.seed)
    save_grid([row[picks] for row in models.recon_rows], figures / "reconstructions.png")

    # Categories the model knows (kept in training); the rest of the catalogue is still searched.
    names, counts = np.unique(subs, return_counts=True)
    known = sorted(
        {c[1] for c in metadata.config.components}
        or set(names[counts >= MIN_SUBCATEGORY_IMAGES].tolist())
    )
    in_known = np.isin(subs, known)
    queries = natural_sample(is_test, inputs.queries, inputs.seed)
    log.info("retrieval: %d natural queries against %d items", len(queries), len(subs))
    relevance = {"article_type": articles, "sub_category": subs}
    retrieval, classification, families = {}, {}, {}
    for name, codes in tqdm(models.codes.items(), desc="models"):
        methods = _methods_for(codes)
        retrieval[name] = retrieval_grid(
            codes, queries, relevance, {"full": None, "own_sub_category": subs}, methods
        )
        train, test = ~is_test & in_known, is_test & in_known
        classification[name] = {
            "sub_category": classification_scores(
                codes.mu[train], subs[train], codes.mu[test], subs[test], inputs.seed
            ),
            "master_category": classification_scores(
                codes.mu[train], masters[train], codes.mu[test], masters[test], inputs.seed
            ),
        }
        headline = HEADLINE_METHOD if codes.sigma is not None else "mu_l2"
        families[name] = per_family_map(
            codes, headline, subs, articles, is_test, inputs.queries_per_family, inputs.seed
        )

    vae = models.codes["vae"]
    pairing_queries = natural_sample(is_test & in_known, inputs.pairing_queries, inputs.seed + 1)
    pairing = pairing_coherence(
        vae.z, subs, pairing_queries, genders, usages, tuple(known), seed=inputs.seed
    )
    pairing["method"] = "fixed_eps"
    _pairing_figure(models, dataset, figures / "pairing.png", pairing_queries, known)
    traversal = _traversal_figure(models, subs, is_test, figures / "traversal.png", picks)

    headline = retrieval["vae"]["article_type"]["full"][HEADLINE_METHOD]["10"]
    results = {
        "command": inputs.command,
        "label_supervised": bool(metadata.config.components),
        "data": _data_description(dataset),
        "model": _model_description(metadata),
        "queries": {
            "sampler": "natural",
            "count": len(queries),
            "per_sub_category": {
                s: int(n)
                for s, n in zip(*np.unique(subs[queries], return_counts=True), strict=True)
            },
            "per_family_cap": inputs.queries_per_family,
            "seed": inputs.seed,
        },
        "method": HEADLINE_METHOD,
        "article_type_map10": headline,
        "sub_category_map10": retrieval["vae"]["sub_category"]["full"][HEADLINE_METHOD]["10"],
        "subcategory_accuracy": classification["vae"]["sub_category"]["accuracy"],
        "subcategory_macro_f1": classification["vae"]["sub_category"]["macro_f1"],
        "psnr": models.reconstruction["vae"]["psnr"],
        "known_sub_categories": known,
        "reconstruction": models.reconstruction,
        "retrieval": retrieval,
        "classification": classification,
        "per_family": families,
        "pairing": pairing,
        "traversal": traversal,
        "figures": {
            "reconstructions": "figures/reconstructions.png",
            "traversal": "figures/traversal.png",
            "pairing": "figures/pairing.png",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    return results


def _figure_picks(is_test: np.ndarray, seed: int, count: int = 10) -> np.ndarray:
    """Positions within the test split of the items shown in the figures."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(int(is_test.sum()), min(count, int(is_test.sum())), replace=False))


def _traversal_figure(
    models: EncodedModels, subs: np.ndarray, is_test: np.ndarray, path: Path, picks: np.ndarray
) -> dict:
    """Paper Fig. 5 on the leading directions: one test item moved along the top two principal
    directions of its own subCategory's codes, ±3 standard deviations."""
    mu = models.codes["vae"].mu
    anchor_row = int(np.flatnonzero(is_test)[picks[0]])
    members = mu[subs == subs[anchor_row]].astype(np.float64)
    pca = PCA(n_components=min(2, len(members) - 1)).fit(members)
    steps = np.linspace(-3.0, 3.0, 9)
    strips = []
    for direction, variance in zip(pca.components_, pca.explained_variance_, strict=True):
        batch = mu[anchor_row][None] + np.outer(steps * np.sqrt(variance), direction)
        strips.append(models.decode(batch.astype(np.float32)))
    save_grid(strips, path)
    return {"sub_category": str(subs[anchor_row]), "directions": len(strips)}


def _pairing_figure(
    models: EncodedModels, dataset: PreparedDataset, path: Path, queries: np.ndarray, known
) -> None:
    """Complete the look for three queries: the query, then its top pairing per target category."""
    z = models.codes["vae"].z.astype(np.float64)
    subs = dataset.labels("sub_category")
    genders = dataset.labels("gender")
    images = dataset.catalogue.images
    targets = [s for s in ("Topwear", "Bottomwear", "Shoes", "Bags", "Watches", "Eyewear", "Belts")
               if s in known]  # fmt: skip
    centres = {s: z[subs == s].mean(axis=0) for s in targets + list(set(subs[queries].tolist()))}
    rows = []
    shown = [q for q in queries if subs[q] in ("Topwear", "Bottomwear", "Shoes")][:3]
    for q in shown:
        row = [images[q]]
        for target in targets:
            if target == subs[q]:
                continue
            members = np.flatnonzero((subs == target) & genders_compatible(genders[q], genders))
            if not len(members):
                continue
            shifted = z[q] + centres[target] - centres[subs[q]]
            best = members[np.argmin(((z[members] - shifted) ** 2).sum(axis=1))]
            row.append(images[best])
        rows.append(np.stack(row))
    if rows:
        save_grid(rows, path)


# --- the paper's protocol -----------------------------------------------------------------


def evaluate_paper_protocol(dataset: PreparedDataset, inputs: EvaluationInputs) -> dict:
    started = time.perf_counter()
    models = encode_all(dataset, inputs)
    is_test = dataset.is_test
    families = dataset.labels("family")
    articles = dataset.labels("article_type")
    ids = dataset.catalogue.ids
    clustering: dict = {}
    cluster_of: dict[str, dict[str, np.ndarray]] = {}
    for name, codes in models.codes.items():
        spaces = (("mu", codes.mu), ("fixed_eps", codes.z)) if codes.sigma is not None else (
            ("mu", codes.mu),
        )  # fmt: skip
        clustering[name] = {}
        cluster_of[name] = {}
        for key, vectors in spaces:
            # Fitted on every item, as the services fit it; scored on the test split only.
            labels = fit_kmeans(vectors, ids, 3, inputs.seed).labels
            cluster_of[name][key] = labels
            clustering[name][key] = per_class_scores(labels[is_test], families[is_test])
    queries = sample_queries(families, is_test, inputs.queries_per_family, inputs.seed)
    retrieval = {}
    for name, codes in tqdm(models.codes.items(), desc="models"):
        for method in _methods_for(codes):
            space = "fixed_eps" if method == "fixed_eps" and codes.sigma is not None else "mu"
            grid = retrieval_grid(
                codes,
                queries,
                {"family": families, "article_type": articles},
                {"full": None, "cluster": cluster_of[name][space]},
                (method,),
            )
            for relevance, scopes in grid.items():
                for scope, by_method in scopes.items():
                    retrieval.setdefault(name, {}).setdefault(relevance, {}).setdefault(
                        scope, {}
                    ).update(by_method)
    return {
        "command": inputs.command,
        "label_supervised": bool(
            models.metadata.config.components or models.metadata.extra.get("label_supervised")
        ),
        "data": _data_description(dataset),
        "model": _model_description(models.metadata),
        "queries": {f: int((families[queries] == f).sum()) for f in sorted(set(families.tolist()))},
        "queries_per_family": inputs.queries_per_family,
        "seed": inputs.seed,
        "reconstruction": models.reconstruction,
        "clustering": clustering,
        "retrieval": retrieval,
        "seconds": round(time.perf_counter() - started, 1),
    }


def write_results(section: str, results: dict, docs_dir: Path) -> dict:
    """Replace one section of docs/results.json and re-render docs/results.md from all of it."""
    from atelier.results_markdown import render_markdown

    docs_dir.mkdir(parents=True, exist_ok=True)
    path = docs_dir / "results.json"
    everything = json.loads(path.read_text()) if path.exists() else {}
    if "whole_catalogue" not in everything and "paper_protocol" not in everything:
        everything = {}  # the single-protocol layout of earlier versions is not kept
    everything[section] = results
    path.write_text(json.dumps(everything, indent=1))
    (docs_dir / "results.md").write_text(render_markdown(everything))
    return everything
