"""Record the split of a model exported before splits were part of its fingerprint (model version 1).

    python scripts/record_model_split.py --version 1 --catalogue ../shared/data/fashion-product-small/styles.csv

Version 1 recorded its split only as `training.data` (families, test fraction, seed) and its data
hash in the earlier form: sha256 over (id, family, articleType, image bytes). This script rebuilds
that earlier hash from the catalogue and refuses to go on unless it matches the recorded one, so
the split it writes is provably the split the model was trained on. It then writes `split`, the
current data hash (which covers the split) and `label_supervised` into both metadata files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from atelier.catalogue import SplitSpec, prepare_dataset
from atelier.modelinfo import DECODER_NAME, ENCODER_NAME, METADATA_FILE


def legacy_fingerprint(items) -> str:
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.item_id):
        digest.update(f"{item.item_id}|{item.family}|{item.article_type}|".encode())
        digest.update(hashlib.sha256(item.image_path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--catalogue", type=Path, required=True)
    args = parser.parse_args()
    paths = [
        args.models / name / str(args.version) / METADATA_FILE
        for name in (ENCODER_NAME, DECODER_NAME)
    ]
    metadata = json.loads(paths[0].read_text())
    if "split" in metadata:
        print(f"model {args.version} already records its split: {metadata['split']}")
        return
    recorded = metadata["training"]["data"]
    split = SplitSpec(
        test_fraction=recorded["test_fraction"],
        seed=recorded["split_seed"],
        stratify="family",
        families=tuple(recorded["families"]),
    )
    dataset = prepare_dataset(args.catalogue, split=split, size=tuple(recorded["image_size"]))
    legacy = legacy_fingerprint(dataset.catalogue.items)
    if legacy != metadata["data_hash"]:
        raise SystemExit(
            f"the catalogue hashes to {legacy} in the earlier form, not the recorded "
            f"{metadata['data_hash']}: not the data model {args.version} was trained on"
        )
    if int(dataset.is_test.sum()) != recorded["test"]:
        raise SystemExit("the rebuilt split's test size differs from the recorded one")
    update = {
        "split": split.to_dict(),
        "data_hash": dataset.fingerprint,
        "legacy_data_hash": legacy,
        "label_supervised": bool(metadata["config"].get("prior_scale")),
    }
    for path in paths:
        data = json.loads(path.read_text())
        data.update(update)
        path.write_text(json.dumps(data, indent=1))
    print(f"model {args.version}: recorded {update}")


if __name__ == "__main__":
    main()
