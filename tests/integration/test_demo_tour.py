"""`atelier demo`: the self-contained tour on a catalogue, with the committed model."""

from __future__ import annotations

import pytest
from PIL import Image

from atelier.demo import run_demo

pytestmark = pytest.mark.integration


def test_tour_pairs_the_item_with_every_other_category(tmp_path, tiny_csv, models_dir):
    summary = run_demo(tiny_csv, models_dir, tmp_path, "1164")
    assert summary["query"].startswith("1164 (")
    home = summary["sub_category"]
    others = {"Shoes", "Sandal", "Bags", "Eyewear", "Watches", "Topwear"} - {home}
    assert set(summary["complete_the_look"]) == others
    assert all(len(items) == 8 for items in summary["complete_the_look"].values())
    assert all(f"({home}/" in item for item in summary["similar_fixed_eps"])
    assert "1164 (" not in " ".join(summary["similar_loglik"])
    tour = Image.open(tmp_path / "tour.png")
    assert tour.height == 2 * 80 * (3 + len(others))  # item row, 2 neighbour rows, 1 per category
    assert (tmp_path / "slider.png").stat().st_size > 0
