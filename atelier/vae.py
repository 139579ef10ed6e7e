"""The convolutional VAE (and the same-shape plain autoencoder): Keras 3 models and their losses."""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from atelier.modelinfo import ModelConfig


class Sampling(layers.Layer):
    """z = μ + σ⊙ε with σ = exp(½·z_log_var) (the paper's eq. 1 writes σ², a typo)."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(tf.shape(z_mean), seed=self.seed_generator)
        return z_mean + tf.exp(0.5 * z_log_var) * epsilon


def build_encoder(config: ModelConfig) -> keras.Model:
    height, width = config.image_size
    images = keras.Input(shape=(height, width, 3), name="images")
    x = images
    for filters in config.filters:
        x = layers.Conv2D(filters, 4, strides=2, padding="same", activation="relu")(x)
        for _ in range(config.convs_per_stage):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(config.dense_units, activation="relu")(x)
    z_mean = layers.Dense(config.latent_dim, name="z_mean")(x)
    outputs = [z_mean]
    if config.variational:
        outputs.append(layers.Dense(config.latent_dim, name="z_log_var")(x))
    return keras.Model(images, outputs, name="encoder")


def build_decoder(config: ModelConfig) -> keras.Model:
    height, width = config.image_size
    bottom = (height // 8, width // 8, config.filters[-1])
    z = keras.Input(shape=(config.latent_dim,), name="z")
    x = layers.Dense(config.dense_units, activation="relu")(z)
    x = layers.Dense(int(np.prod(bottom)), activation="relu")(x)
    x = layers.Reshape(bottom)(x)
    for filters in reversed(config.filters[:-1]):
        x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", activation="relu")(x)
        for _ in range(config.convs_per_stage):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    images = layers.Conv2DTranspose(
        3, 4, strides=2, padding="same", activation="sigmoid", name="images"
    )(x)
    return keras.Model(z, images, name="decoder")


def pixel_bce(target, predicted, eps: float = 1e-6):
    """Element-wise binary cross-entropy (summed later over every pixel and channel)."""
    predicted = tf.clip_by_value(predicted, eps, 1.0 - eps)
    return -(target * tf.math.log(predicted) + (1.0 - target) * tf.math.log(1.0 - predicted))


def gaussian_kl(z_mean, z_log_var, prior_mean=0.0):
    """KL(N(z_mean, exp(z_log_var)) || N(prior_mean, I)) per row, summed over dimensions."""
    return tf.reduce_sum(
        0.5 * (tf.exp(z_log_var) + tf.square(z_mean - prior_mean) - 1.0 - z_log_var), axis=1
    )


def mixture_logits(z_mean, prior_means):
    """log N(μ; m_c, I) up to a constant shared by every component: the posterior's logits."""
    return -0.5 * tf.reduce_sum(tf.square(z_mean[:, None, :] - prior_means[None]), axis=2)


@dataclass
class Autoencoder:
    """Encoder, decoder and (for the category prior) the learned component means, from one config."""

    config: ModelConfig
    encoder: keras.Model = field(init=False)
    decoder: keras.Model = field(init=False)
    prior_means: tf.Variable | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config)
        if self.config.category_prior:
            initial = np.random.default_rng(0).normal(
                scale=self.config.prior_init_scale,
                size=(len(self.config.components), self.config.latent_dim),
            )
            self.prior_means = tf.Variable(initial.astype(np.float32), name="prior_means")
        self.sampling = Sampling()

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        variables = list(self.encoder.trainable_variables) + list(self.decoder.trainable_variables)
        if self.prior_means is not None:
            variables.append(self.prior_means)
        return variables

    def losses(self, images, component=None, training: bool = True) -> dict:
        """Per-batch mean losses: reconstruction (BCE summed over pixels), KL, component CE.

        `component` is each item's prior component (category-prior models only).
        """
        if self.config.variational:
            z_mean, z_log_var = self.encoder(images, training=training)
            z = self.sampling([z_mean, z_log_var]) if training else z_mean
        else:
            z_mean = self.encoder(images, training=training)
            z_log_var = None
            z = z_mean
        reconstruction = self.decoder(z, training=training)
        recon = tf.reduce_mean(tf.reduce_sum(pixel_bce(images, reconstruction), axis=(1, 2, 3)))
        kl = tf.constant(0.0)
        classification = tf.constant(0.0)
        if z_log_var is not None:
            prior_mean = 0.0
            if self.prior_means is not None and component is not None:
                prior_mean = tf.gather(self.prior_means, component)
                classification = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=component, logits=mixture_logits(z_mean, self.prior_means)
                    )
                )
            kl = tf.reduce_mean(gaussian_kl(z_mean, z_log_var, prior_mean))
        total = recon + self.config.beta * kl + self.config.class_weight * classification
        return {"loss": total, "recon": recon, "kl": kl, "class": classification}
