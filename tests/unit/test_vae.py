"""The VAE: shapes, a loss that falls, export/reload fidelity and fixed-ε reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import log_softmax

from atelier.catalogue import prepare_dataset
from atelier.modelinfo import DECODER_NAME, ENCODER_NAME, METADATA_FILE, ModelConfig, model_versions
from atelier.modelstore import LoadedDecoder, LoadedEncoder, export_model
from atelier.taxonomy import OTHER, Taxonomy
from atelier.training import TrainConfig, train
from atelier.vae import Autoencoder, gaussian_kl, mixture_logits


@pytest.fixture(scope="module")
def tiny_dataset(tiny_csv):
    return prepare_dataset(tiny_csv, progress=False)


@pytest.fixture(scope="module")
def tiny_taxonomy(tiny_dataset):
    return Taxonomy.fit(
        tiny_dataset.labels("master_category"),
        tiny_dataset.labels("sub_category"),
        tiny_dataset.labels("article_type"),
        ~tiny_dataset.is_test,
        min_subcategory_images=20,
        min_component_images=10,
    )


def test_shapes_follow_the_config():
    config = ModelConfig(image_size=(96, 72), latent_dim=8, convs_per_stage=1)
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


def test_kl_against_a_shifted_prior_by_hand():
    # q = N((1, 0), diag(1, 4)), prior N((0, 1), I):
    # KL = ½[(1 + 1 − 1 − 0) + (4 + 1 − 1 − ln 4)] = ½(5 − ln 4)
    z_mean = tf.constant([[1.0, 0.0]])
    z_log_var = tf.constant([[0.0, np.log(4.0)]], tf.float32)
    kl = gaussian_kl(z_mean, z_log_var, tf.constant([[0.0, 1.0]]))
    assert float(kl[0]) == pytest.approx(0.5 * (5.0 - np.log(4.0)), rel=1e-6)
    # Against N(0, I) the mean term is ‖μ‖² = 1: ½[(1 + 1 − 1) + (4 − 1 − ln 4)] = ½(4 − ln 4)
    assert float(gaussian_kl(z_mean, z_log_var)[0]) == pytest.approx(0.5 * (4.0 - np.log(4.0)))


def test_mixture_posterior_by_hand():
    # μ = (0, 0); means (1, 0) and (0, 2): log N up to a constant = −½‖μ − m‖² = −½ and −2
    logits = mixture_logits(tf.constant([[0.0, 0.0]]), tf.constant([[1.0, 0.0], [0.0, 2.0]]))
    assert np.allclose(logits.numpy(), [[-0.5, -2.0]])


def test_category_prior_losses_use_each_items_component(tiny_dataset, tiny_taxonomy):
    config = ModelConfig(
        components=tiny_taxonomy.components, class_weight=5.0, prior_init_scale=2.0
    )
    model = Autoencoder(config)
    images = tiny_dataset.catalogue.images[:8]
    component = tf.constant(
        tiny_taxonomy.component_index(
            tiny_dataset.labels("sub_category")[:8], tiny_dataset.labels("article_type")[:8]
        )
    )
    losses = model.losses(images, component=component, training=False)
    z_mean, z_log_var = model.encoder(images, training=False)
    means = model.prior_means.numpy()[component.numpy()]
    variance = np.exp(z_log_var.numpy())
    kl = 0.5 * (variance + (z_mean.numpy() - means) ** 2 - 1 - z_log_var.numpy()).sum(axis=1)
    assert float(losses["kl"]) == pytest.approx(kl.mean(), rel=1e-4)
    distances = ((z_mean.numpy()[:, None, :] - model.prior_means.numpy()[None]) ** 2).sum(axis=2)
    log_probs = log_softmax(-0.5 * distances, axis=1)
    expected = -log_probs[np.arange(8), component.numpy()].mean()
    assert float(losses["class"]) == pytest.approx(expected, rel=1e-4)
    total = losses["recon"] + losses["kl"] + 5.0 * losses["class"]
    assert float(losses["loss"]) == pytest.approx(float(total), rel=1e-6)


def test_taxonomy_components(tiny_dataset, tiny_taxonomy):
    subs = {sub for _, sub, _ in tiny_taxonomy.components}
    assert subs == {"Shoes", "Sandal", "Bags", "Eyewear", "Watches", "Topwear"}
    assert ("Accessories", "Eyewear", "Sunglasses") in tiny_taxonomy.components
    # An articleType with fewer than 10 training images shares its subCategory's (other).
    index = tiny_taxonomy.component_index(
        tiny_dataset.labels("sub_category"), tiny_dataset.labels("article_type")
    )
    assert (index >= 0).all()
    others = [c for c in tiny_taxonomy.components if c[2] == OTHER]
    assert others, "the fixture has rare articleTypes"
    strict = Taxonomy.fit(
        tiny_dataset.labels("master_category"),
        tiny_dataset.labels("sub_category"),
        tiny_dataset.labels("article_type"),
        ~tiny_dataset.is_test,
        min_subcategory_images=60,
    )
    assert strict.components == () and set(strict.left_out) == {
        "Shoes", "Sandal", "Bags", "Eyewear", "Watches", "Topwear"
    }  # fmt: skip
    assert "50 images, fewer than 60" in strict.left_out["Bags"]
    assert Taxonomy.from_json(tiny_taxonomy.to_json()) == tiny_taxonomy
    assert strict.component_index(["Bags"], ["Handbags"]).tolist() == [-1]


@pytest.mark.parametrize("category_prior", [False, True])
def test_loss_decreases_over_a_few_steps(tmp_path, tiny_dataset, tiny_taxonomy, category_prior):
    images = tiny_dataset.images(test=False)
    components = tiny_taxonomy.component_index(
        tiny_dataset.labels("sub_category", test=False),
        tiny_dataset.labels("article_type", test=False),
    )
    config = ModelConfig(
        components=tiny_taxonomy.components if category_prior else (),
        class_weight=10.0 if category_prior else 0.0,
    )
    result = train(
        config,
        TrainConfig(epochs=8, batch_size=64, seed=1, flip=True),
        images,
        components if category_prior else None,
        tmp_path / "run",
        progress=False,
    )
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.8, losses
    if category_prior:
        assert result.history[-1]["class"] < result.history[0]["class"]


def test_training_refuses_items_outside_the_taxonomy(tmp_path, tiny_dataset, tiny_taxonomy):
    config = ModelConfig(components=tiny_taxonomy.components, class_weight=1.0)
    images = tiny_dataset.images(test=False)[:4]
    with pytest.raises(ValueError, match="component of the model's taxonomy"):
        train(
            config, TrainConfig(epochs=1), images, np.array([0, 1, -1, 2]), tmp_path, progress=False
        )
    with pytest.raises(ValueError, match="every training image's component"):
        train(config, TrainConfig(epochs=1), images, None, tmp_path, progress=False)


def test_training_resumes_from_checkpoint(tmp_path, tiny_dataset):
    images = tiny_dataset.images(test=False)[:64]
    config = ModelConfig()
    first = train(
        config, TrainConfig(epochs=1, batch_size=32), images, None, tmp_path / "run", progress=False
    )
    second = train(
        config, TrainConfig(epochs=2, batch_size=32), images, None, tmp_path / "run", progress=False
    )
    assert first.epochs_run == 1 and second.epochs_run == 1
    assert [h["epoch"] for h in second.history] == [1, 2]
    with pytest.raises(ValueError, match="different model"):
        train(
            ModelConfig(latent_dim=8),
            TrainConfig(epochs=3),
            images,
            None,
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
