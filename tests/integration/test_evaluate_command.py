"""`atelier train` then `atelier evaluate` on the fixture: the figures agree with the model they
describe, the split is checked, and both protocols land in one results file."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from atelier.catalogue import SplitSpec, prepare_dataset
from atelier.evaluation import natural_sample, reconstruction_scores
from atelier.modelinfo import read_metadata
from atelier.modelstore import LoadedDecoder, LoadedEncoder

pytestmark = pytest.mark.integration


def _atelier(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        check=check,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_csv):
    """A category-prior model exported as version 5 and a plain VAE run, both on the fixture."""
    work = tmp_path_factory.mktemp("evaluate")
    common = ["--catalogue", str(tiny_csv), "--epochs", "2", "--latent-dim", "8"]
    _atelier(
        "train", *common, "--min-subcategory-images", "20", "--min-component-images", "8",
        "--run-dir", str(work / "run"), "--export-dir", str(work / "models"), "--version", "5",
    )  # fmt: skip
    _atelier("train", *common, "--no-category-prior", "--run-dir", str(work / "plain"))
    return work


def test_training_records_its_split_and_taxonomy(trained, tiny_csv):
    metadata = read_metadata(trained / "models", 5)
    assert metadata.extra["split"] == SplitSpec().to_dict()
    assert metadata.data_hash == prepare_dataset(tiny_csv, progress=False).fingerprint
    components = metadata.config.components
    assert {sub for _, sub, _ in components} == {
        "Shoes", "Sandal", "Bags", "Eyewear", "Watches", "Topwear"
    }  # fmt: skip
    assert np.asarray(metadata.extra["prior_means"]).shape == (len(components), 8)
    assert metadata.extra["training"]["trained_on"] == int(
        (~prepare_dataset(tiny_csv, progress=False).is_test).sum()
    )


def test_whole_catalogue_figures_describe_the_model(trained, tiny_csv):
    docs = trained / "docs"
    _atelier(
        "evaluate", "--catalogue", str(tiny_csv), "--models", str(trained / "models"),
        "--baseline", f"plain_vae={trained / 'plain'}", "--docs", str(docs),
        "--queries", "30", "--queries-per-family", "10", "--pairing-queries", "20",
    )  # fmt: skip
    results = json.loads((docs / "results.json").read_text())["whole_catalogue"]
    dataset = prepare_dataset(tiny_csv, progress=False)
    # Reconstruction is the exported model's, on the test split.
    encoder = LoadedEncoder(trained / "models", 5)
    test_images = dataset.images(test=True)
    mu = encoder.encode(test_images)["mu"]
    decoded = LoadedDecoder(trained / "models", 5).decode(mu)
    expected = reconstruction_scores(test_images, decoded)
    assert results["psnr"] == pytest.approx(expected["psnr"], rel=1e-4)
    assert results["reconstruction"]["vae"]["mse"] == pytest.approx(expected["mse"], rel=1e-4)
    # The natural sample is drawn from the test split, in the catalogue's proportions.
    queries = natural_sample(dataset.is_test, 30, 0)
    subs = dataset.labels("sub_category")
    assert results["queries"]["count"] == 30
    assert results["queries"]["per_sub_category"] == {
        s: int((subs[queries] == s).sum()) for s in set(subs[queries].tolist())
    }
    # Headline keys are the served method's figures from the grids.
    grid = results["retrieval"]["vae"]
    assert results["article_type_map10"] == grid["article_type"]["full"]["fixed_eps"]["10"]
    assert results["sub_category_map10"] == grid["sub_category"]["full"]["fixed_eps"]["10"]
    classification = results["classification"]["vae"]["sub_category"]
    assert results["subcategory_accuracy"] == classification["accuracy"]
    assert classification["test_items"] == int(dataset.is_test.sum())
    assert sum(c["support"] for c in classification["per_class_f1"].values()) == int(
        dataset.is_test.sum()
    )
    assert set(results["retrieval"]) == {"vae", "pca16", "pca8", "plain_vae"}
    pairing = results["pairing"]
    assert pairing["queries"] == 20 and pairing["pair_lists"] > 0
    assert pairing["gender_match"] >= pairing["without_gender_filter"]["gender_match"]
    assert results["label_supervised"] is True
    markdown = (docs / "results.md").read_text()
    assert f"{results['article_type_map10']:.3f}" in markdown
    assert "Label-supervised" in markdown
    for figure in ("reconstructions.png", "traversal.png", "pairing.png"):
        assert (docs / "figures" / figure).stat().st_size > 0


def test_evaluation_refuses_another_split(trained, tiny_csv):
    result = _atelier(
        "evaluate", "--catalogue", str(tiny_csv), "--models", str(trained / "models"),
        "--docs", str(trained / "other-docs"), "--split-seed", "1", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "trained with split" in result.stderr
    assert not (trained / "other-docs" / "results.json").exists()


def test_paper_protocol_scores_clusters_on_the_test_split(tmp_path, tiny_csv):
    """The paper's three families, from a model trained on them; clusters scored on test items."""
    common = ["--catalogue", str(tiny_csv), "--families", "Footwear,Bags,Eyewear", "--epochs", "1"]
    _atelier(
        "train", *common, "--no-category-prior", "--latent-dim", "8",
        "--run-dir", str(tmp_path / "run"), "--export-dir", str(tmp_path / "models"),
    )  # fmt: skip
    _atelier(
        "evaluate", *common[:4], "--models", str(tmp_path / "models"), "--docs", str(tmp_path),
        "--queries-per-family", "10",
    )  # fmt: skip
    paper = json.loads((tmp_path / "results.json").read_text())["paper_protocol"]
    dataset = prepare_dataset(
        tiny_csv,
        split=SplitSpec(stratify="family", families=("Footwear", "Bags", "Eyewear")),
        progress=False,
    )
    families = dataset.labels("family")[dataset.is_test]
    for scores in paper["clustering"]["vae"].values():
        for family, values in scores.items():
            # accuracy is over the test items only: a whole number of them, out of the test split
            hits = values["accuracy"] * len(families)
            assert hits == pytest.approx(round(hits), abs=1e-6), family
    assert paper["queries"] == {"Bags": 8, "Eyewear": 8, "Footwear": 10}
    assert paper["label_supervised"] is False
    assert "paper's protocol" in (tmp_path / "results.md").read_text()
