"""Build the small sample catalogue shipped in data/sample-catalogue from the full one in ../shared.

Run once by a maintainer; the demo and tests read only the copy in the repo.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

QUOTAS = {
    "Footwear": 400,
    "Bags": 300,
    "Eyewear": 200,
    "Watches": 100,
    "Topwear": 100,
    "Bottomwear": 50,
    "Wallets": 50,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path("../shared/data/fashion-product-small"))
    parser.add_argument("--out", type=Path, default=Path("data/sample-catalogue"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    duplicates = set()
    with (args.source / "duplicate_images.csv").open() as handle:
        duplicates = {row["id"] for row in csv.DictReader(handle)}
    with (args.source / "styles.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        rows = [r for r in reader if r["id"] not in duplicates]
    rng = random.Random(args.seed)
    chosen = []
    for family, quota in QUOTAS.items():
        members = [
            r
            for r in rows
            if (r["masterCategory"] == "Footwear" and family == "Footwear")
            or (r["masterCategory"] != "Footwear" and r["subCategory"] == family)
        ]
        chosen += rng.sample(members, min(quota, len(members)))
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
    print(f"wrote {len(chosen)} items to {args.out}")


if __name__ == "__main__":
    main()
