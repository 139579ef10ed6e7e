"""Evaluation metrics: AP@k / mAP@k for retrieval, and cluster-to-class matched scores."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def average_precision_at_k(relevant: np.ndarray, k: int, total_relevant: int) -> float:
    """AP@k = (1/min(k, R))·Σ_{i≤k} P@i·rel_i for one ranked 0/1 relevance list.

    `total_relevant` (R) counts every relevant item in the catalogue, not only the ones
    the search could reach, so a scope that hides relevant items is penalised.
    """
    hits = np.asarray(relevant[:k], dtype=np.float64)
    if total_relevant <= 0:
        return 0.0
    precision_at_i = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(np.sum(precision_at_i * hits) / min(k, total_relevant))


def mean_average_precision(
    ranked_relevance: list[np.ndarray], total_relevant: list[int], ks: tuple[int, ...]
) -> dict[str, float]:
    return {
        str(k): float(
            np.mean(
                [
                    average_precision_at_k(r, k, t)
                    for r, t in zip(ranked_relevance, total_relevant, strict=True)
                ]
            )
        )
        for k in ks
    }


def match_clusters_to_classes(cluster_labels: np.ndarray, classes: np.ndarray) -> dict[int, str]:
    """Hungarian matching of clusters to classes that maximises the items on the diagonal."""
    class_names = sorted(set(classes.tolist()))
    cluster_ids = sorted(set(cluster_labels.tolist()))
    overlap = np.array(
        [
            [np.sum((cluster_labels == c) & (classes == name)) for name in class_names]
            for c in cluster_ids
        ]
    )
    rows, cols = linear_sum_assignment(-overlap)
    return {cluster_ids[r]: class_names[c] for r, c in zip(rows, cols, strict=True)}


def per_class_scores(
    cluster_labels: np.ndarray, classes: np.ndarray
) -> dict[str, dict[str, float]]:
    """One-vs-rest accuracy, precision, recall and F1 per class after cluster matching (paper Tables 1–2)."""
    mapping = match_clusters_to_classes(cluster_labels, classes)
    predicted = np.array([mapping.get(int(c), "<unmatched>") for c in cluster_labels])
    scores = {}
    for name in sorted(set(classes.tolist())):
        truth = classes == name
        guess = predicted == name
        tp = float(np.sum(truth & guess))
        precision = tp / max(float(guess.sum()), 1.0)
        recall = tp / max(float(truth.sum()), 1.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {
            "accuracy": float(np.mean(truth == guess)),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
    return scores
