"""What an exported model version is, readable without TensorFlow: the served names and
signatures, the architecture (`ModelConfig`), and `atelier_model.json` (`ModelMetadata`: input
size, latent dim, β, the training-data hash and the version's fixed ε).

Processes that only call the model server (encoder, worker, decoder) use this module; exporting
and loading SavedModels is atelier.modelstore's job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ENCODER_NAME = "atelier_encoder"
DECODER_NAME = "atelier_decoder"
ENCODE_SIGNATURE = "encode"
DECODE_SIGNATURE = "decode"
METADATA_FILE = "atelier_model.json"


@dataclass(frozen=True)
class ModelConfig:
    """Shape and objective of a model. Saved with every export."""

    image_size: tuple[int, int] = (80, 64)  # (height, width); both divisible by 8
    latent_dim: int = 16
    filters: tuple[int, int, int] = (32, 64, 128)
    dense_units: int = 256
    # 3x3 convolutions added after each stride-2 stage, in the encoder and the decoder alike.
    convs_per_stage: int = 0
    beta: float = 1.0
    variational: bool = True
    # The category prior (label-supervised training; encoding never needs a label). An item of
    # component c has the prior N(m_c, I) instead of N(0, I); the means m_c are learned with the
    # networks, and the mixture's posterior p(c | μ) ∝ N(μ; m_c, I) is trained to name the item's
    # component with weight `class_weight`. Empty `components` is the paper's plain VAE.
    components: tuple[tuple[str, str, str], ...] = ()
    class_weight: float = 0.0
    prior_init_scale: float = 0.1

    def __post_init__(self) -> None:
        height, width = self.image_size
        if height % 8 or width % 8:
            raise ValueError(
                f"image size {self.image_size} must be divisible by 8 (3 stride-2 convs)"
            )
        if self.components and not self.variational:
            raise ValueError("the category prior needs a variational model")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("image_size", "filters"):
            if key in known:
                known[key] = tuple(known[key])
        if "components" in known:
            known["components"] = tuple(tuple(c) for c in known["components"])
        return cls(**known)

    @property
    def category_prior(self) -> bool:
        return bool(self.components)


@dataclass(frozen=True)
class ModelMetadata:
    version: int
    config: ModelConfig
    epsilon: np.ndarray
    epsilon_seed: int
    data_hash: str
    extra: dict

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "image_size": list(self.config.image_size),
            "latent_dim": self.config.latent_dim,
            "beta": self.config.beta,
            "data_hash": self.data_hash,
            "epsilon": [float(v) for v in self.epsilon],
            "epsilon_seed": self.epsilon_seed,
            "config": self.config.to_dict(),
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict) -> ModelMetadata:
        known = {
            "version",
            "image_size",
            "latent_dim",
            "beta",
            "data_hash",
            "epsilon",
            "epsilon_seed",
            "config",
        }
        return cls(
            version=int(data["version"]),
            config=ModelConfig.from_dict(data["config"]),
            epsilon=np.asarray(data["epsilon"], dtype=np.float32),
            epsilon_seed=int(data["epsilon_seed"]),
            data_hash=data["data_hash"],
            extra={k: v for k, v in data.items() if k not in known},
        )


def model_versions(models_dir: Path, name: str = ENCODER_NAME) -> list[int]:
    base = Path(models_dir) / name
    if not base.is_dir():
        return []
    return sorted(
        int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / METADATA_FILE).exists()
    )


def read_metadata(
    models_dir: Path, version: int | None = None, name: str = ENCODER_NAME
) -> ModelMetadata:
    versions = model_versions(models_dir, name)
    if not versions:
        raise FileNotFoundError(f"no exported versions of {name} under {models_dir}")
    version = versions[-1] if version is None else version
    if version not in versions:
        raise FileNotFoundError(
            f"{name} version {version} not found under {models_dir} (have {versions})"
        )
    metadata = ModelMetadata.from_json(
        json.loads((Path(models_dir) / name / str(version) / METADATA_FILE).read_text())
    )
    # The folder is the version, as TensorFlow Serving sees it: a copy under another number
    # is that version.
    return replace(metadata, version=version)
