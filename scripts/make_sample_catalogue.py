"""Build the sample catalogue shipped in data/sample-catalogue from the full one in ../shared.

Run once by a maintainer; the demo and tests read only the copy in the repo. Items are drawn in
proportion to the whole catalogue's subCategories (byte-duplicates left out), with at least
`--floor` items of every subCategory the default model knows, so every category can be tried.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from collections import Counter
from pathlib import Path

from atelier.taxonomy import MIN_SUBCATEGORY_IMAGES

SOURCE = """# Sample catalogue

{items} real product photos (60x80 JPEG) and their `styles.csv` rows, drawn with seed {seed} from
the Kaggle "Fashion Product Images (Small)" catalogue (Myntra; listed as MIT by Kaggle; cite
Param Aggarwal, *Fashion Product Images (Small)*, Kaggle, 2019). Byte-duplicate images were left out.

Drawn in proportion to the whole catalogue's subCategories, with at least {floor} items of each
subCategory the default model was trained on: {counts}.

Rebuilt by `python scripts/make_sample_catalogue.py` from a full copy of the catalogue.
"""


def allocate(sizes: dict[str, int], total: int, floor: int) -> dict[str, int]:
    """Largest-remainder proportional quotas, each at least `floor` (and at most the size)."""
    everything = sum(sizes.values())
    quotas = {k: min(n, max(floor, total * n // everything)) for k, n in sizes.items()}
    remainders = sorted(
        sizes, key=lambda k: -(total * sizes[k] / everything - total * sizes[k] // everything)
    )
    for key in remainders:
        if sum(quotas.values()) >= total:
            break
        if quotas[key] < sizes[key]:
            quotas[key] += 1
    return quotas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path("../shared/data/fashion-product-small"))
    parser.add_argument("--out", type=Path, default=Path("data/sample-catalogue"))
    parser.add_argument("--items", type=int, default=1200)
    parser.add_argument("--floor", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with (args.source / "duplicate_images.csv").open() as handle:
        duplicates = {row["id"] for row in csv.DictReader(handle)}
    with (args.source / "styles.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        rows = [r for r in reader if r["id"] not in duplicates]
    sizes = Counter(r["subCategory"] for r in rows)
    known = {s: n for s, n in sizes.items() if n >= MIN_SUBCATEGORY_IMAGES}
    quotas = allocate(known, args.items, args.floor)
    rng = random.Random(args.seed)
    chosen = []
    for sub in sorted(quotas):
        members = [r for r in rows if r["subCategory"] == sub]
        chosen += rng.sample(members, quotas[sub])
    chosen.sort(key=lambda r: int(r["id"]))
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "images").mkdir(parents=True)
    for row in chosen:
        shutil.copy2(
            args.source / "images" / f"{row['id']}.jpg", args.out / "images" / f"{row['id']}.jpg"
        )
    with (args.out / "styles.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
    counts = ", ".join(
        f"{sub} {n}" for sub, n in Counter(r["subCategory"] for r in chosen).most_common()
    )
    (args.out / "SOURCE.md").write_text(
        SOURCE.format(items=f"{len(chosen):,}", seed=args.seed, floor=args.floor, counts=counts)
    )
    print(f"wrote {len(chosen)} items to {args.out}: {counts}")


if __name__ == "__main__":
    main()
