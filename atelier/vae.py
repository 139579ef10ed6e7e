"""The convolutional VAE (and the same-shape plain autoencoder): Keras 3 models and their losses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import keras
import numpy as np
import tensorflow as tf
from keras import layers


@dataclass(frozen=True)
class ModelConfig:
    """Shape and objective of a model. Saved with every export."""

    image_size: tuple[int, int] = (80, 64)  # (height, width); both divisible by 8
    latent_dim: int = 16
    filters: tuple[int, int, int] = (32, 64, 128)
    dense_units: int = 256
    beta: float = 1.0
    variational: bool = True
    # Label guidance (0 disables each): the prior for an item of family c is N(prior_scale·e_c, I)
    # instead of N(0, I), and a linear head on z_mean predicts the articleType.
    prior_scale: float = 0.0
    families: tuple[str, ...] = ()
    article_types: tuple[str, ...] = ()
    article_weight: float = 0.0

    def __post_init__(self) -> None:
        height, width = self.image_size
        if height % 8 or width % 8:
            raise ValueError(
                f"image size {self.image_size} must be divisible by 8 (3 stride-2 convs)"
            )
        if self.prior_scale and len(self.families) > self.latent_dim:
            raise ValueError("a guided prior needs latent_dim >= number of families")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("image_size", "filters", "families", "article_types"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    @property
    def guided(self) -> bool:
        return bool(self.prior_scale and self.families)

    def prior_means(self) -> np.ndarray:
        """(n_families, latent_dim): family c's prior mean is prior_scale along axis c."""
        means = np.zeros((max(len(self.families), 1), self.latent_dim), np.float32)
        for index in range(len(self.families)):
            means[index, index] = self.prior_scale
        return means


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
    images = layers.Conv2DTranspose(
        3, 4, strides=2, padding="same", activation="sigmoid", name="images"
    )(x)
    return keras.Model(z, images, name="decoder")


def pixel_bce(target, predicted, eps: float = 1e-6):
    """Element-wise binary cross-entropy (summed later over every pixel and channel)."""
    predicted = tf.clip_by_value(predicted, eps, 1.0 - eps)
    return -(target * tf.math.log(predicted) + (1.0 - target) * tf.math.log(1.0 - predicted))


@dataclass
class Autoencoder:
    """Encoder, decoder and (for guided models) the articleType head, built from one config."""

    config: ModelConfig
    encoder: keras.Model = field(init=False)
    decoder: keras.Model = field(init=False)
    article_head: keras.layers.Dense | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config)
        if self.config.article_weight and self.config.article_types:
            self.article_head = layers.Dense(len(self.config.article_types), name="article_head")
            self.article_head.build((None, self.config.latent_dim))
        self.sampling = Sampling()
        self.prior_means = tf.constant(self.config.prior_means())

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        variables = list(self.encoder.trainable_variables) + list(self.decoder.trainable_variables)
        if self.article_head is not None:
            variables += list(self.article_head.trainable_variables)
        return variables

    def losses(self, images, family_index=None, article_index=None, training: bool = True) -> dict:
        """Per-batch mean losses: reconstruction (BCE summed over pixels), KL, articleType CE."""
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
        if z_log_var is not None:
            prior_mean = 0.0
            if self.config.guided and family_index is not None:
                prior_mean = tf.gather(self.prior_means, family_index)
            kl = tf.reduce_mean(
                tf.reduce_sum(
                    0.5 * (tf.exp(z_log_var) + tf.square(z_mean - prior_mean) - 1.0 - z_log_var),
                    axis=1,
                )
            )
        article = tf.constant(0.0)
        if self.article_head is not None and article_index is not None:
            logits = self.article_head(z_mean)
            article = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=article_index, logits=logits)
            )
        total = recon + self.config.beta * kl + self.config.article_weight * article
        return {"loss": total, "recon": recon, "kl": kl, "article": article}
