"""The evaluation command: reconstruction, clustering and retrieval grids, figures, docs/results.*"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.decomposition import PCA
from tqdm import tqdm

from atelier.catalogue import PreparedDataset
from atelier.clustering import fit_kmeans
from atelier.latent import log_likelihood
from atelier.metrics import mean_average_precision, per_class_scores
from atelier.modelstore import LoadedDecoder, LoadedEncoder

log = logging.getLogger(__name__)

KS = (10, 25, 50, 500)
METHODS = ("loglik", "fixed_eps", "mu_l2", "cosine", "cityblock")
SCOPES = ("full", "cluster")
RELEVANCE = ("family", "article_type")
PAPER_CLUSTER_F1 = {"Bags": 0.81, "Footwear": 0.98, "Eyewear": 0.70}
PAPER_SAME_CLUSTER_FIXED_EPS_MAP10 = 0.953


@dataclass(frozen=True)
class EvaluationInputs:
    models_dir: Path
    version: int | None
    ae_run_dir: Path | None
    plain_vae_run_dir: Path | None
    docs_dir: Path
    queries_per_family: int = 500
    seed: int = 0
    command: str = ""


@dataclass
class Codes:
    mu: np.ndarray
    sigma: np.ndarray | None
    z: np.ndarray  # fixed-ε code (== mu for deterministic baselines)


def reconstruction_scores(original: np.ndarray, reconstructed: np.ndarray) -> dict[str, float]:
    per_image_mse = np.mean((original - reconstructed) ** 2, axis=(1, 2, 3))
    psnr = 10.0 * np.log10(1.0 / np.maximum(per_image_mse, 1e-12))
    return {"mse": float(per_image_mse.mean()), "psnr": float(psnr.mean())}


def kmeans_labels(vectors: np.ndarray, item_ids: list[str], k: int, seed: int) -> np.ndarray:
    """k-means exactly as the services fit it (item-id order), so their clusters are the same."""
    return fit_kmeans(vectors, item_ids, k, seed).labels


def _scores(method: str, query_index: np.ndarray, codes: Codes) -> np.ndarray:
    """Similarity (higher is better) of each query item against every catalogue item."""
    mu_q = codes.mu[query_index].astype(np.float64)
    if method == "loglik":
        if codes.sigma is None:
            raise ValueError("log-likelihood needs σ")
        return log_likelihood(mu_q, codes.mu, codes.sigma)
    if method == "fixed_eps":
        z_q = codes.z[query_index].astype(np.float64)
        return -_squared_l2(z_q, codes.z.astype(np.float64))
    if method == "mu_l2":
        return -_squared_l2(mu_q, codes.mu.astype(np.float64))
    if method == "cosine":
        base = codes.mu.astype(np.float64)
        base = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
        query = mu_q / np.maximum(np.linalg.norm(mu_q, axis=1, keepdims=True), 1e-12)
        return query @ base.T
    if method == "cityblock":
        base = codes.mu.astype(np.float64)
        return -np.abs(mu_q[:, None, :] - base[None, :, :]).sum(axis=2)
    raise ValueError(f"unknown method {method}")


def _squared_l2(xq: np.ndarray, xb: np.ndarray) -> np.ndarray:
    return (xq**2).sum(1)[:, None] - 2.0 * xq @ xb.T + (xb**2).sum(1)[None, :]


def retrieval_grid(
    codes: Codes,
    query_index: np.ndarray,
    families: np.ndarray,
    article_types: np.ndarray,
    cluster_of: dict[str, np.ndarray],
    methods: tuple[str, ...] = METHODS,
    chunk: int = 64,
) -> dict:
    """mAP@k for every relevance × scope × method; the query itself is never a result."""
    depth = min(max(KS), len(families) - 1)
    total = {
        "family": {f: int((families == f).sum()) for f in set(families.tolist())},
        "article_type": {a: int((article_types == a).sum()) for a in set(article_types.tolist())},
    }
    ranked: dict[tuple[str, str, str], list[np.ndarray]] = {}
    relevant_counts: dict[str, list[int]] = {r: [] for r in RELEVANCE}
    for q in query_index:
        relevant_counts["family"].append(total["family"][families[q]] - 1)
        relevant_counts["article_type"].append(total["article_type"][article_types[q]] - 1)
    for method in methods:
        clusters = cluster_of["z" if method == "fixed_eps" else "mu"]
        for start in range(0, len(query_index), chunk):
            batch = query_index[start : start + chunk]
            scores = _scores(method, batch, codes)
            scores[np.arange(len(batch)), batch] = -np.inf
            for scope in SCOPES:
                scoped = scores.copy()
                if scope == "cluster":
                    scoped[clusters[None, :] != clusters[batch][:, None]] = -np.inf
                top = np.argpartition(-scoped, depth - 1, axis=1)[:, :depth]
                for row, q in enumerate(batch):
                    order = top[row][np.argsort(-scoped[row, top[row]], kind="stable")]
                    order = order[np.isfinite(scoped[row, order])]
                    ranked.setdefault(("family", scope, method), []).append(
                        families[order] == families[q]
                    )
                    ranked.setdefault(("article_type", scope, method), []).append(
                        article_types[order] == article_types[q]
                    )
    grid: dict = {}
    for (relevance, scope, method), lists in ranked.items():
        grid.setdefault(relevance, {}).setdefault(scope, {})[method] = mean_average_precision(
            lists, relevant_counts[relevance], KS
        )
    return grid


def sample_queries(
    families: np.ndarray, is_test: np.ndarray, per_family: int, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chosen = []
    for family in sorted(set(families.tolist())):
        candidates = np.flatnonzero(is_test & (families == family))
        chosen.append(
            np.sort(rng.choice(candidates, min(per_family, len(candidates)), replace=False))
        )
    return np.concatenate(chosen)


def _codes_from_run(run_dir: Path, images: np.ndarray, epsilon: np.ndarray) -> tuple[Codes, object]:
    """μ/σ/z (and the model) from a training run's latest checkpoint."""
    import tensorflow as tf

    from atelier.vae import Autoencoder, ModelConfig

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
    return Codes(mu, sigma, mu + sigma * epsilon), model


def _decode_with(model, z: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [model.decoder(z[s : s + 256], training=False).numpy() for s in range(0, len(z), 256)]
    )


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_grid(rows: list[np.ndarray], path: Path, scale: int = 2) -> None:
    """Rows of equally sized images -> one PNG (each row is (n, H, W, 3) in [0, 1])."""
    strips = [np.concatenate(list(_to_uint8(row)), axis=1) for row in rows]
    picture = Image.fromarray(np.concatenate(strips, axis=0))
    picture = picture.resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def run_evaluation(dataset: PreparedDataset, inputs: EvaluationInputs) -> dict:
    started = time.perf_counter()
    catalogue = dataset.catalogue
    images = catalogue.images
    families = catalogue.categories
    article_types = catalogue.article_types
    is_test = dataset.is_test
    encoder = LoadedEncoder(inputs.models_dir, inputs.version)
    decoder = LoadedDecoder(inputs.models_dir, encoder.metadata.version)
    metadata = encoder.metadata
    figures = inputs.docs_dir / "figures"

    log.info("encoding %d images", len(images))
    encoded = encoder.encode(images)
    codes = Codes(encoded["mu"], encoded["sigma"], encoded["z"])

    # Reconstruction on the test split: the VAE decodes μ (the deterministic code).
    test_images = images[is_test]
    vae_recon = decoder.decode(codes.mu[is_test])
    reconstruction = {"vae": reconstruction_scores(test_images, vae_recon)}
    flat_train = images[~is_test].reshape((~is_test).sum(), -1)
    pca = PCA(n_components=metadata.latent_dim, random_state=inputs.seed).fit(flat_train)
    pca_codes = pca.transform(images.reshape(len(images), -1))
    pca_recon = pca.inverse_transform(pca_codes[is_test]).reshape(test_images.shape)
    reconstruction["pca"] = reconstruction_scores(test_images, np.clip(pca_recon, 0, 1))
    ae_recon = None
    baselines: dict[str, Codes] = {
        "pca": Codes(pca_codes.astype(np.float32), None, pca_codes.astype(np.float32))
    }
    if inputs.ae_run_dir:
        ae_codes, ae_model = _codes_from_run(inputs.ae_run_dir, images, metadata.epsilon)
        ae_recon = _decode_with(ae_model, ae_codes.mu[is_test])
        reconstruction["ae"] = reconstruction_scores(test_images, ae_recon)
        baselines["ae"] = ae_codes
    if inputs.plain_vae_run_dir:
        plain_codes, plain_model = _codes_from_run(
            inputs.plain_vae_run_dir, images, metadata.epsilon
        )
        reconstruction["plain_vae"] = reconstruction_scores(
            test_images, _decode_with(plain_model, plain_codes.mu[is_test])
        )
        baselines["plain_vae"] = plain_codes

    rng = np.random.default_rng(inputs.seed)
    shown = np.sort(rng.choice(np.flatnonzero(is_test), 10, replace=False))
    position = {index: i for i, index in enumerate(np.flatnonzero(is_test))}
    picks = [position[i] for i in shown]
    rows = [test_images[picks], vae_recon[picks]]
    if ae_recon is not None:
        rows.append(ae_recon[picks])
    rows.append(np.clip(pca_recon[picks], 0, 1))
    save_grid(rows, figures / "reconstructions.png")

    # Clustering (k=3) on μ and on the fixed-ε z, over the whole deduplicated catalogue.
    clustering: dict = {}
    cluster_of: dict[str, np.ndarray] = {}
    for key, vectors in (("mu", codes.mu), ("fixed_eps", codes.z)):
        labels = kmeans_labels(vectors, catalogue.ids, 3, inputs.seed)
        cluster_of["mu" if key == "mu" else "z"] = labels
        clustering[key] = per_class_scores(labels, families)
    baseline_clustering = {
        name: per_class_scores(kmeans_labels(c.mu, catalogue.ids, 3, inputs.seed), families)
        for name, c in baselines.items()
    }

    query_index = sample_queries(families, is_test, inputs.queries_per_family, inputs.seed)
    log.info("retrieval: %d queries against %d items", len(query_index), len(images))
    retrieval = retrieval_grid(codes, query_index, families, article_types, cluster_of)
    baseline_retrieval = {}
    for name, baseline in tqdm(baselines.items(), desc="baseline retrieval"):
        labels = kmeans_labels(baseline.mu, catalogue.ids, 3, inputs.seed)
        methods = ("mu_l2",) if baseline.sigma is None else ("loglik", "fixed_eps", "mu_l2")
        baseline_retrieval[name] = retrieval_grid(
            baseline, query_index, families, article_types, {"mu": labels, "z": labels}, methods
        )

    # Traversal (Fig. 5): the two non-family dimensions whose μ varies most, around one item.
    family_axes = set(range(len(metadata.config.families))) if metadata.config.guided else set()
    spread = [
        (float(codes.mu[:, d].std()), d) for d in range(metadata.latent_dim) if d not in family_axes
    ]
    dims = [d for _, d in sorted(spread, reverse=True)[:2]]
    anchor = codes.mu[shown[0]]
    steps = np.linspace(-3.0, 3.0, 9)
    strips = []
    for d in dims:
        centre, scale = float(codes.mu[:, d].mean()), float(codes.mu[:, d].std())
        batch = np.repeat(anchor[None], len(steps), axis=0)
        batch[:, d] = centre + steps * scale
        strips.append(decoder.decode(batch.astype(np.float32)))
    save_grid(strips, figures / "traversal.png")

    results = {
        "command": inputs.command,
        "data": {k: v for k, v in dataset.description.items() if k != "skipped_ids"}
        | {"data_hash": dataset.fingerprint, "skipped_ids": dataset.description["skipped_ids"]},
        "model": {
            "models_dir": str(inputs.models_dir),
            "version": metadata.version,
            "config": metadata.config.to_dict(),
            "training": metadata.extra.get("training", {}),
        },
        "queries": {
            f: int((families[query_index] == f).sum()) for f in sorted(set(families.tolist()))
        },
        "queries_per_family": inputs.queries_per_family,
        "seed": inputs.seed,
        "reconstruction": reconstruction,
        "clustering": clustering,
        "retrieval": retrieval,
        "baselines": {"clustering": baseline_clustering, "retrieval": baseline_retrieval},
        "traversal_dims": dims,
        "figures": {
            "reconstructions": "figures/reconstructions.png",
            "traversal": "figures/traversal.png",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    inputs.docs_dir.mkdir(parents=True, exist_ok=True)
    (inputs.docs_dir / "results.json").write_text(json.dumps(results, indent=1))
    (inputs.docs_dir / "results.md").write_text(render_markdown(results))
    return results


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_markdown(results: dict) -> str:
    data = results["data"]
    training = results["model"].get("training", {})
    config = results["model"]["config"]
    lines = [
        "# Model results",
        "",
        "Written by the evaluation command; every figure below comes from it. Rerun with:",
        "",
        f"    {results['command']}",
        "",
        "(`make results` retrains the default model and both baselines first, then runs it.)",
        "",
        "## Data",
        "",
        f"- Catalogue: `{data['csv']}`, families {data['families']}: {data['in_families']} images, "
        f"{data['after_dedup']} after removing byte-duplicates, {data['skipped']} skipped as unusable.",
        f"- Split: deterministic, stratified by family, duplicate groups kept on one side: "
        f"{data['train']} train / {data['test']} test (seed {data['split_seed']}). Data hash `{data['data_hash']}`.",
        f"- Model: version {results['model']['version']}, input {config['image_size'][0]}x{config['image_size'][1]}, "
        f"latent dim {config['latent_dim']}, β={config['beta']}, family prior scale {config['prior_scale']}, "
        f"articleType head weight {config['article_weight']}; trained {training.get('epochs', '?')} epochs.",
        f"- Queries: {results['queries']} test items, searched against all {data['after_dedup']} items minus the query.",
        "",
        *targets_section(results),
        "## Reconstruction (test split, per-pixel MSE on [0, 1], mean per-image PSNR)",
        "",
        _row(["model", "MSE", "PSNR (dB)"]),
        _row(["---", "---", "---"]),
    ]
    for name, scores in results["reconstruction"].items():
        lines.append(_row([name, f"{scores['mse']:.5f}", f"{scores['psnr']:.2f}"]))
    lines += [
        "",
        "![originals, VAE, AE, PCA](figures/reconstructions.png)",
        "",
        "Rows: originals, VAE, AE (if evaluated), PCA.",
        "",
    ]
    lines += [
        "## Clustering, k-means k=3 (per class, after Hungarian matching of clusters to families)",
        "",
    ]
    for key, title in (("fixed_eps", "fixed-ε z (paper Table 1)"), ("mu", "μ (paper Table 2)")):
        lines += [
            f"### {title}",
            "",
            _row(["class", "accuracy", "precision", "recall", "F1", "paper F1"]),
            _row(["---"] * 6),
        ]
        for name, s in results["clustering"][key].items():
            lines.append(
                _row(
                    [
                        name,
                        f"{s['accuracy']:.3f}",
                        f"{s['precision']:.3f}",
                        f"{s['recall']:.3f}",
                        f"{s['f1']:.3f}",
                        PAPER_CLUSTER_F1.get(name, ""),
                    ]
                )
            )
        lines.append("")
    lines += [
        "Baselines (k-means on their codes), F1 per class:",
        "",
        _row(["codes", "Bags", "Eyewear", "Footwear"]),
        _row(["---"] * 4),
    ]
    for name, scores in results["baselines"]["clustering"].items():
        lines.append(
            _row(
                [name]
                + [f"{scores[c]['f1']:.3f}" for c in ("Bags", "Eyewear", "Footwear") if c in scores]
            )
        )
    lines.append("")
    for relevance, title in (
        ("family", "same family (paper Table 3)"),
        ("article_type", "same articleType (stricter)"),
    ):
        lines += [
            f"## Retrieval mAP, relevant = {title}",
            "",
            _row(["scope", "method", "@10", "@25", "@50", "@500"]),
            _row(["---"] * 6),
        ]
        for scope in SCOPES:
            for method in METHODS:
                m = results["retrieval"][relevance][scope][method]
                lines.append(
                    _row([scope, method] + [f"{m[k]:.3f}" for k in ("10", "25", "50", "500")])
                )
        for name, grid in results["baselines"]["retrieval"].items():
            for scope in SCOPES:
                for method, m in grid[relevance][scope].items():
                    lines.append(
                        _row(
                            [scope, f"baseline {name}: {method}"]
                            + [f"{m[k]:.3f}" for k in ("10", "25", "50", "500")]
                        )
                    )
        lines.append("")
    lines += [
        "Methods: `loglik` ranks by the paper's eq. 2, log q(μ_query | x), from each item's μ and σ; "
        "`fixed_eps` by Euclidean distance between fixed-ε codes z = μ + σ⊙ε; `mu_l2`, `cosine` and "
        "`cityblock` compare μ. Scope `cluster` searches only the query's k-means cluster (k=3; on z for "
        "`fixed_eps`, on μ otherwise). AP@k = (1/min(k, R))·Σ P@i·relᵢ with R counted over the whole "
        "catalogue, so relevant items hidden outside the cluster count against the cluster scope.",
        "",
        "## Latent traversal (paper Fig. 5)",
        "",
        f"Dimensions {results['traversal_dims']} (the non-family dimensions with the widest spread of μ), "
        "each moved from −3 to +3 standard deviations around one test item's code.",
        "",
        "![traversal](figures/traversal.png)",
        "",
        *service_section(results),
    ]
    return "\n".join(lines)


def targets_section(results: dict) -> list[str]:
    """The issue's targets, each checked against the figures of this run."""
    clustering = results["clustering"]
    worst_f1 = min(min(s["f1"] for s in clustering[key].values()) for key in ("mu", "fixed_eps"))
    beats_paper = all(
        clustering[key][name]["f1"] >= PAPER_CLUSTER_F1[name]
        for key in ("mu", "fixed_eps")
        for name in PAPER_CLUSTER_F1
    )
    map10 = results["retrieval"]["family"]["cluster"]["fixed_eps"]["10"]
    seconds = results["model"].get("training", {}).get("train_seconds")
    article = results["retrieval"]["article_type"]["full"]
    best_method = max(article, key=lambda m: article[m]["10"])
    rows = [
        ("k-means F1 per class ≥ the paper's (0.81 / 0.98 / 0.70)", "met" if beats_paper else "missed",
         " / ".join(f"{n} {clustering['fixed_eps'][n]['f1']:.3f}" for n in ("Bags", "Footwear", "Eyewear"))),
        ("k-means F1 ≥ 0.95 on every class (μ and fixed-ε)", "met" if worst_f1 >= 0.95 else "missed", f"lowest {worst_f1:.3f}"),
        ("same-cluster fixed-ε mAP@10 (family) ≥ 0.95 (paper 0.953)", "met" if map10 >= 0.95 else "missed", f"{map10:.3f}"),
        ("training under 60 minutes on the 2-core CPU", "met" if seconds and seconds < 3600 else "not measured" if not seconds else "missed",
         f"{seconds / 60:.1f} min" if seconds else "?"),
        ("articleType mAP@10, whole catalogue (no target; calibration best 0.694)", "reported", f"{best_method} {article[best_method]['10']:.3f}"),
    ]  # fmt: skip
    lines = ["## Targets", "", "| target | status | figure |", "| --- | --- | --- |"]
    lines += [f"| {name} | {status} | {figure} |" for name, status, figure in rows]
    lines += [
        "",
        "Why the clusters are clean: plain k-means on a plain VAE splits Footwear (69% of the items) instead of "
        "isolating Eyewear (8%) — see the baseline rows below, and the same effect in the reference calibration. "
        "The default model therefore takes the KL term against a per-family prior N(scale·e_family, I) and adds a "
        "linear articleType head on μ, so the families sit on their own axes and k=3 finds them. The plain VAE "
        "(`--no-guided`, the paper's objective) is evaluated alongside as `plain_vae`. The training time is the "
        "wall-clock sum of the epochs as logged by the training loop; the run shared the 2 cores with the AE "
        "baseline's training for most of its epochs, so it is an upper bound.",
        "",
    ]
    return lines


def service_section(results: dict) -> list[str]:
    """The mAP table as reproduced through the running services (written by bench.reproduce_map)."""
    reproduction = results.get("service_reproduction")
    if not reproduction:
        return []
    grid = reproduction["retrieval"]
    lines = [
        "## The same table through the running services",
        "",
        f"`{reproduction['command']}` encoded the catalogue through the queue ({reproduction['path']}) and sent all "
        f"{reproduction['queries']} queries for every method and scope over gRPC (k=500). Largest difference from the "
        f"tables above: **{reproduction['max_abs_difference']:.1e}**"
        + (
            " — the same numbers to 3 decimals." if reproduction["identical_to_3_decimals"] else "."
        ),
        "",
        "| relevance | scope | method | @10 | @25 | @50 | @500 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for relevance in RELEVANCE:
        for scope in SCOPES:
            for method in METHODS:
                m = grid[relevance][scope][method]
                lines.append(
                    f"| {relevance} | {scope} | {method} | "
                    + " | ".join(f"{m[k]:.3f}" for k in ("10", "25", "50", "500"))
                    + " |"
                )
    lines.append("")
    return lines
