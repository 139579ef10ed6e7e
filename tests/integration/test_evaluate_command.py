"""The evaluation command end to end on the fixture: every documented results.json key is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_evaluate_writes_documented_keys(tmp_path, tiny_csv, models_dir):
    command = [
        sys.executable,
        "-m",
        "atelier.cli",
        "evaluate",
        "--catalogue",
        str(tiny_csv),
        "--models",
        str(models_dir),
        "--docs",
        str(tmp_path / "docs"),
        "--queries-per-family",
        "10",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    assert set(results["reconstruction"]) >= {"vae", "pca"}
    for model in ("vae", "pca"):
        assert set(results["reconstruction"][model]) == {"mse", "psnr"}
    for codes in ("mu", "fixed_eps"):
        for family in ("Bags", "Footwear", "Eyewear"):
            assert set(results["clustering"][codes][family]) == {
                "accuracy",
                "precision",
                "recall",
                "f1",
            }
    for relevance in ("family", "article_type"):
        for scope in ("full", "cluster"):
            for method in ("loglik", "fixed_eps", "mu_l2", "cosine", "cityblock"):
                values = results["retrieval"][relevance][scope][method]
                assert set(values) == {"10", "25", "50", "500"}
                assert all(0.0 <= v <= 1.0 for v in values.values())
    assert results["data"]["in_families"] == 200
    assert "evaluate" in results["command"]
    markdown = (tmp_path / "docs" / "results.md").read_text()
    assert results["command"] in markdown
    assert (tmp_path / "docs" / "figures" / "reconstructions.png").stat().st_size > 0
    assert (tmp_path / "docs" / "figures" / "traversal.png").stat().st_size > 0
