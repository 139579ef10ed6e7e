"""Shared fixtures: the 300-image catalogue copied from the real data, and the committed model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "fashion-product-tiny"
MODELS = ROOT / "models"


@pytest.fixture(scope="session")
def tiny_csv() -> Path:
    return FIXTURE / "styles.csv"


@pytest.fixture(scope="session")
def tiny_images() -> Path:
    return FIXTURE / "images"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS
