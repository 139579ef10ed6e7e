"""Training loop: a compiled tf.function step, progress bar, checkpoints with resume, seeding."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from atelier.modelinfo import ModelConfig
from atelier.vae import Autoencoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 1e-3
    # "cosine": anneal the learning rate to 5% of its start over the whole run; "constant": keep it.
    schedule: str = "cosine"
    seed: int = 0
    # Mirror each training image left-right with probability ½: a product's mirror image is the
    # same product, so the codes learn what does not depend on which way it faces.
    flip: bool = False


@dataclass
class TrainingResult:
    model: Autoencoder
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    images: np.ndarray,
    components: np.ndarray | None,
    run_dir: Path,
    progress: bool = True,
) -> TrainingResult:
    """Train (or resume training of) a model on images in [0, 1], checkpointing every epoch.

    `components` holds each image's prior component (category-prior models; every one must be
    in the model's taxonomy).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(train_config.seed)
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    log.info("training on %s", "GPU" if "GPU" in devices else "CPU")

    model = Autoencoder(model_config)
    steps_per_epoch = -(-len(images) // train_config.batch_size)
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = (
        train_config.learning_rate
    )
    if train_config.schedule == "cosine":
        # The optimizer's step counter is checkpointed, so a resumed run continues the schedule.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            train_config.learning_rate, train_config.epochs * steps_per_epoch, alpha=0.05
        )
    elif train_config.schedule != "constant":
        raise ValueError(f"unknown learning-rate schedule {train_config.schedule!r}")
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    optimizer.build(model.trainable_variables)
    epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(
        encoder=model.encoder,
        decoder=model.decoder,
        optimizer=optimizer,
        epoch=epoch_counter,
        **({"prior_means": model.prior_means} if model.prior_means is not None else {}),
    )
    manager = tf.train.CheckpointManager(checkpoint, run_dir / "checkpoints", max_to_keep=2)
    config_path = run_dir / "config.json"
    wanted = {"model": model_config.to_dict(), "train": asdict(train_config)}
    if manager.latest_checkpoint:
        saved = json.loads(config_path.read_text())
        if saved["model"] != json.loads(json.dumps(wanted["model"])):
            raise ValueError(
                f"{run_dir} holds a checkpoint of a different model; use a new run dir"
            )
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log.info("resumed from %s at epoch %d", manager.latest_checkpoint, int(epoch_counter))
    config_path.write_text(json.dumps(wanted, indent=2))

    if model_config.category_prior:
        if components is None or len(components) != len(images):
            raise ValueError("the category prior needs every training image's component")
        if (components < 0).any() or (components >= len(model_config.components)).any():
            raise ValueError("every training image needs a component of the model's taxonomy")
        component_index = np.asarray(components, np.int32)
    else:
        component_index = np.zeros(len(images), np.int32)
    with_prior = model_config.category_prior

    flip = train_config.flip

    @tf.function(reduce_retracing=True)
    def train_step(batch, batch_component):
        if flip:
            mirrored = tf.random.uniform([tf.shape(batch)[0], 1, 1, 1]) < 0.5
            batch = tf.where(mirrored, tf.reverse(batch, axis=[2]), batch)
        with tf.GradientTape() as tape:
            losses = model.losses(batch, component=batch_component if with_prior else None)
        gradients = tape.gradient(losses["loss"], model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return losses

    history: list[dict[str, float]] = []
    history_path = run_dir / "history.json"
    if history_path.exists() and int(epoch_counter):
        history = json.loads(history_path.read_text())[: int(epoch_counter)]
    run_started = time.perf_counter()
    # Seconds in the history are cumulative over resumes: the training time a model really cost.
    started = run_started - (history[-1]["seconds"] if history else 0.0)
    n = len(images)
    first_epoch = int(epoch_counter)
    for epoch in range(first_epoch, train_config.epochs):
        order = np.random.default_rng([train_config.seed, epoch]).permutation(n)
        sums: dict[str, float] = {}
        steps = 0
        bar = tqdm(
            range(0, n, train_config.batch_size),
            desc=f"epoch {epoch + 1}/{train_config.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for start in bar:
            index = order[start : start + train_config.batch_size]
            losses = train_step(tf.constant(images[index]), tf.constant(component_index[index]))
            steps += 1
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            bar.set_postfix({k: f"{v / steps:.2f}" for k, v in sums.items()})
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        means["epoch"] = epoch + 1
        means["seconds"] = round(time.perf_counter() - started, 1)
        history.append(means)
        epoch_counter.assign(epoch + 1)
        manager.save()
        history_path.write_text(json.dumps(history, indent=1))
        log.info(
            "epoch %d/%d loss %.1f recon %.1f kl %.2f class %.3f (%.0fs)",
            epoch + 1,
            train_config.epochs,
            means["loss"],
            means["recon"],
            means["kl"],
            means["class"],
            means["seconds"],
        )
    elapsed = time.perf_counter() - run_started
    return TrainingResult(model, train_config.epochs - first_epoch, elapsed, history)
