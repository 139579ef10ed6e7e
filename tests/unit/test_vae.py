"""The VAE: shapes, a loss that falls, export/reload fidelity and fixed-ε reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from atelier.catalogue import prepare_dataset
from atelier.modelstore import (
    DECODER_NAME,
    ENCODER_NAME,
    METADATA_FILE,
    LoadedDecoder,
    LoadedEncoder,
    export_model,
    model_versions,
)
from atelier.training import TrainConfig, train
from atelier.vae import Autoencoder, ModelConfig


@pytest.fixture(scope="module")
def tiny_dataset(tiny_csv):
    return prepare_dataset(tiny_csv, families=None, progress=False)


def test_shapes_follow_the_config():
    config = ModelConfig(image_size=(96, 72), latent_dim=8)
    model = Autoencoder(config)
    images = tf.zeros((2, 96, 72, 3))
    z_mean, z_log_var = model.encoder(images)
    assert z_mean.shape == (2, 8) and z_log_var.shape == (2, 8)
    assert model.decoder(z_mean).shape == (2, 96, 72, 3)
    with pytest.raises(ValueError, match="divisible by 8"):
        ModelConfig(image_size=(80, 60))


def test_plain_autoencoder_has_no_sigma():
    model = Autoencoder(ModelConfig(variational=False))
    out = model.encoder(tf.zeros((1, 80, 64, 3)))
    assert out.shape == (1, 16)


def test_guided_prior_means_and_kl_reference():
    config = ModelConfig(prior_scale=4.0, families=("Bags", "Eyewear", "Footwear"))
    means = config.prior_means()
    assert means.shape == (3, 16)
    assert np.array_equal(means[1], np.eye(16, dtype=np.float32)[1] * 4.0)


@pytest.mark.parametrize("guided", [False, True])
def test_loss_decreases_over_a_few_steps(tmp_path, tiny_dataset, guided):
    images, families, article_types = tiny_dataset.split(test=False)
    config = ModelConfig(
        prior_scale=4.0 if guided else 0.0,
        families=tuple(sorted(set(families))) if guided else (),
        article_types=tuple(sorted(set(article_types))) if guided else (),
        article_weight=10.0 if guided else 0.0,
    )
    result = train(
        config,
        TrainConfig(epochs=4, batch_size=64, seed=1),
        images,
        families,
        article_types,
        tmp_path / "run",
        progress=False,
    )
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.8, losses


def test_training_resumes_from_checkpoint(tmp_path, tiny_dataset):
    images, families, types = tiny_dataset.split(test=False)
    images = images[:64]
    config = ModelConfig()
    first = train(
        config,
        TrainConfig(epochs=1, batch_size=32),
        images,
        families[:64],
        types[:64],
        tmp_path / "run",
        progress=False,
    )
    second = train(
        config,
        TrainConfig(epochs=2, batch_size=32),
        images,
        families[:64],
        types[:64],
        tmp_path / "run",
        progress=False,
    )
    assert first.epochs_run == 1 and second.epochs_run == 1
    assert [h["epoch"] for h in second.history] == [1, 2]
    with pytest.raises(ValueError, match="different model"):
        train(
            ModelConfig(latent_dim=8),
            TrainConfig(epochs=3),
            images,
            families[:64],
            types[:64],
            tmp_path / "run",
            progress=False,
        )


def test_export_then_reload_gives_identical_outputs(tmp_path, tiny_dataset):
    images = tiny_dataset.catalogue.images[:10]
    model = Autoencoder(ModelConfig())
    metadata = export_model(model, tmp_path, version=3, data_hash="abc", epsilon_seed=11)
    assert model_versions(tmp_path) == [3]
    for name in (ENCODER_NAME, DECODER_NAME):
        saved = json.loads((tmp_path / name / "3" / METADATA_FILE).read_text())
        assert saved["latent_dim"] == 16 and saved["image_size"] == [80, 64]
        assert saved["data_hash"] == "abc" and len(saved["epsilon"]) == 16
    z_mean, z_log_var = model.encoder(images, training=False)
    encoded = LoadedEncoder(tmp_path).encode(images)
    np.testing.assert_allclose(encoded["mu"], z_mean.numpy(), rtol=1e-5, atol=1e-5)
    sigma = np.exp(0.5 * z_log_var.numpy())
    np.testing.assert_allclose(encoded["sigma"], sigma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        encoded["z"], z_mean.numpy() + sigma * metadata.epsilon, rtol=1e-5, atol=1e-5
    )
    decoded = LoadedDecoder(tmp_path).decode(encoded["mu"])
    np.testing.assert_allclose(
        decoded, model.decoder(z_mean, training=False).numpy(), rtol=1e-5, atol=1e-5
    )


def test_fixed_eps_codes_reproducible_across_reloads(models_dir, tiny_dataset):
    images = tiny_dataset.catalogue.images[:16]
    first = LoadedEncoder(models_dir).encode(images)
    second = LoadedEncoder(models_dir).encode(images)
    assert np.array_equal(first["z"], second["z"])
    assert np.array_equal(first["mu"], second["mu"])
    eps = LoadedEncoder(models_dir).metadata.epsilon
    np.testing.assert_allclose(first["z"], first["mu"] + first["sigma"] * eps, rtol=1e-5, atol=1e-5)
