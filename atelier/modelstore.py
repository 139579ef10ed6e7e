"""Export and load model versions as TensorFlow Serving lays them out: models/<name>/<version>/.

Each version is a SavedModel with named signatures plus `atelier_model.json`, which carries the
input size, latent dim, β, the training-data hash and the version's fixed ε.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from atelier.latent import draw_epsilon
from atelier.modelinfo import (
    DECODE_SIGNATURE,
    DECODER_NAME,
    ENCODE_SIGNATURE,
    ENCODER_NAME,
    METADATA_FILE,
    ModelMetadata,
    read_metadata,
)
from atelier.vae import Autoencoder


class _EncoderModule(tf.Module):
    def __init__(self, encoder, epsilon: np.ndarray, image_size: tuple[int, int]):
        super().__init__()
        self.encoder = encoder
        self.epsilon = tf.constant(epsilon, dtype=tf.float32)
        height, width = image_size
        self.encode = tf.function(
            self._encode,
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")],
        )

    def _encode(self, images):
        z_mean, z_log_var = self.encoder(images, training=False)
        sigma = tf.exp(0.5 * z_log_var)
        return {
            "mu": z_mean,
            "sigma": sigma,
            "z": z_mean + sigma * self.epsilon,
            "z_log_var": z_log_var,
        }


class _DecoderModule(tf.Module):
    def __init__(self, decoder, latent_dim: int):
        super().__init__()
        self.decoder = decoder
        self.decode = tf.function(
            self._decode, input_signature=[tf.TensorSpec([None, latent_dim], tf.float32, name="z")]
        )

    def _decode(self, z):
        return {"images": self.decoder(z, training=False)}


WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def write_warmup_requests(
    version_dir: Path, model_name: str, signature: str, inputs: dict[str, np.ndarray]
) -> None:
    """TensorFlow Serving's warm-up file: PredictionLog records replayed before a version serves."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        log_record = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        writer.write(log_record.SerializeToString())


def read_warmup_requests(version_dir: Path) -> list:
    from tensorflow_serving.apis import prediction_log_pb2

    path = version_dir / WARMUP_FILE
    if not path.exists():
        return []
    records = []
    for raw in tf.data.TFRecordDataset(str(path)):
        records.append(prediction_log_pb2.PredictionLog.FromString(raw.numpy()).predict_log.request)
    return records


def _save_atomically(
    module: tf.Module, signatures: dict, target: Path, metadata: dict, warmup: tuple[str, str, dict]
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tf.saved_model.save(module, str(staging), signatures=signatures)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        write_warmup_requests(staging, *warmup)
        if target.exists():
            shutil.rmtree(target)
        # TF Serving polls the model dir: it must never see a half-written version.
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def export_model(
    model: Autoencoder,
    models_dir: Path,
    version: int,
    data_hash: str,
    epsilon_seed: int | None = None,
    extra: dict | None = None,
) -> ModelMetadata:
    """Write encoder and decoder SavedModels for one version, with its metadata and fixed ε."""
    config = model.config
    if not config.variational:
        raise ValueError("only variational models are exported for serving")
    epsilon_seed = version if epsilon_seed is None else epsilon_seed
    metadata = ModelMetadata(
        version=version,
        config=config,
        epsilon=draw_epsilon(config.latent_dim, epsilon_seed),
        epsilon_seed=epsilon_seed,
        data_hash=data_hash,
        extra={"exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})},
    )
    models_dir = Path(models_dir)
    encoder_module = _EncoderModule(model.encoder, metadata.epsilon, config.image_size)
    decoder_module = _DecoderModule(model.decoder, config.latent_dim)
    height, width = config.image_size
    for name, module, signature, function, warmup_inputs in (
        (ENCODER_NAME, encoder_module, ENCODE_SIGNATURE, encoder_module.encode,
         {"images": np.full((1, height, width, 3), 0.5, np.float32)}),
        (DECODER_NAME, decoder_module, DECODE_SIGNATURE, decoder_module.decode,
         {"z": np.zeros((1, config.latent_dim), np.float32)}),
    ):  # fmt: skip
        signatures = {signature: function, "serving_default": function}
        target = models_dir / name / str(version)
        _save_atomically(
            module, signatures, target, metadata.to_json(), (name, signature, warmup_inputs)
        )
    return metadata


class LoadedEncoder:
    """An exported encoder version, called through its `encode` signature."""

    def __init__(self, models_dir: Path, version: int | None = None):
        self.metadata = read_metadata(models_dir, version, ENCODER_NAME)
        path = Path(models_dir) / ENCODER_NAME / str(self.metadata.version)
        self._saved = tf.saved_model.load(str(path))
        self._encode = self._saved.signatures[ENCODE_SIGNATURE]

    def encode(self, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        """μ, σ and fixed-ε z for images (n, H, W, 3) in [0, 1]."""
        parts: dict[str, list[np.ndarray]] = {"mu": [], "sigma": [], "z": []}
        for start in range(0, len(images), batch_size):
            out = self._encode(images=tf.constant(images[start : start + batch_size], tf.float32))
            for key in parts:
                parts[key].append(out[key].numpy())
        latent = self.metadata.latent_dim
        return {
            k: np.concatenate(v) if v else np.zeros((0, latent), np.float32)
            for k, v in parts.items()
        }


class LoadedDecoder:
    """An exported decoder version, called through its `decode` signature."""

    def __init__(self, models_dir: Path, version: int | None = None):
        self.metadata = read_metadata(models_dir, version, DECODER_NAME)
        path = Path(models_dir) / DECODER_NAME / str(self.metadata.version)
        self._saved = tf.saved_model.load(str(path))
        self._decode = self._saved.signatures[DECODE_SIGNATURE]

    def decode(self, z: np.ndarray, batch_size: int = 256) -> np.ndarray:
        parts = []
        for start in range(0, len(z), batch_size):
            parts.append(
                self._decode(z=tf.constant(z[start : start + batch_size], tf.float32))[
                    "images"
                ].numpy()
            )
        height, width = self.metadata.image_size
        return np.concatenate(parts) if parts else np.zeros((0, height, width, 3), np.float32)


class ServableNotFound(LookupError):
    """An unknown model name, version or signature."""


class ServableInputError(ValueError):
    """Inputs that do not fit a signature: wrong names, dtype or shape."""


@dataclass
class Servable:
    """One loaded SavedModel version and its signatures, as TensorFlow Serving would hold it."""

    name: str
    version: int
    path: Path
    loaded: object
    signature_defs: dict  # signature name -> SignatureDef proto

    def signature(self, signature_name: str):
        name = signature_name or "serving_default"
        if name not in self.loaded.signatures:  # type: ignore[attr-defined]
            raise ServableNotFound(
                f"model {self.name} version {self.version} has no signature {name!r} "
                f"(has {sorted(self.loaded.signatures)})"  # type: ignore[attr-defined]
            )
        return self.loaded.signatures[name]  # type: ignore[attr-defined]

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        function = self.signature(signature_name)
        specs = function.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise ServableInputError(
                f"signature expects inputs {sorted(specs)}, got {sorted(inputs)}"
            )
        tensors = {}
        for key, spec in specs.items():
            value = inputs[key]
            if value.dtype != spec.dtype.as_numpy_dtype:
                raise ServableInputError(
                    f"input {key!r} must be {spec.dtype.name}, got {value.dtype}"
                )
            if not spec.shape.is_compatible_with(value.shape):
                raise ServableInputError(
                    f"input {key!r} must have shape {spec.shape}, got {list(value.shape)}"
                )
            tensors[key] = tf.constant(value)
        return {k: v.numpy() for k, v in function(**tensors).items()}


def _signature_defs(path: Path) -> dict:
    from tensorflow.python.saved_model import loader_impl  # the parser TF Serving's metadata uses

    saved_model = loader_impl.parse_saved_model(str(path))
    return dict(saved_model.meta_graphs[0].signature_def)


class ServableRegistry:
    """Every version of every model under a models dir, loaded once (`models/<name>/<version>/`)."""

    def __init__(self, models_dir: Path, names: tuple[str, ...] | None = None):
        self.models_dir = Path(models_dir)
        self._servables: dict[str, dict[int, Servable]] = {}
        for model_dir in sorted(p for p in self.models_dir.iterdir() if p.is_dir()):
            if names and model_dir.name not in names:
                continue
            for version_dir in sorted(model_dir.iterdir()):
                if version_dir.name.isdigit() and (version_dir / "saved_model.pb").exists():
                    servable = Servable(
                        model_dir.name,
                        int(version_dir.name),
                        version_dir,
                        tf.saved_model.load(str(version_dir)),
                        _signature_defs(version_dir),
                    )
                    self._servables.setdefault(model_dir.name, {})[servable.version] = servable

    def names(self) -> list[str]:
        return sorted(self._servables)

    def versions(self, name: str) -> list[int]:
        return sorted(self._servables.get(name, {}))

    def get(self, name: str, version: int | None = None) -> Servable:
        versions = self._servables.get(name)
        if not versions:
            raise ServableNotFound(f"unknown model {name!r} (serving {self.names()})")
        chosen = max(versions) if version is None else version
        if chosen not in versions:
            raise ServableNotFound(
                f"model {name!r} has no version {chosen} (have {sorted(versions)})"
            )
        return versions[chosen]

    def warm_up(self) -> int:
        """Replay each version's TF Serving warm-up requests, as TensorFlow Serving does at load."""
        replayed = 0
        for versions in self._servables.values():
            for servable in versions.values():
                for request in read_warmup_requests(servable.path):
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                    servable.run(request.model_spec.signature_name, inputs)
                    replayed += 1
        return replayed
