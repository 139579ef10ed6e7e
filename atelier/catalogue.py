"""Catalogue loading: CSV schemas, image decoding to model input, duplicates and the train/test split."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from atelier.confinement import looks_like_url

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = (80, 64)  # (height, width), as the model sees it
PAPER_FAMILIES = ("Footwear", "Bags", "Eyewear")
MAX_IMAGE_PIXELS = 40_000_000  # refuse decompression bombs before decoding
MAX_IMAGE_FILE_BYTES = 64 * 1024 * 1024  # a catalogue image file read whole is at most this
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
# Images larger than this many times the model's input are shrunk before anything else, so the
# blank check and the conversions cost kilobytes rather than the full resolution in float32.
SHRINK_FACTOR = 4
BLANK_PIXEL_STD = 2.0  # the catalogue's three near-blank photos have std < 2


class ImageError(ValueError):
    """An image that cannot be used, with a reason a person can act on."""


@dataclass(frozen=True)
class CatalogueItem:
    """One catalogue row. Labels are optional: uploaded photos and new items come without them."""

    item_id: str
    image_path: Path
    article_type: str = ""
    sub_category: str = ""
    master_category: str = ""
    gender: str = ""
    usage: str = ""
    season: str = ""
    colour: str = ""
    name: str = ""

    @property
    def family(self) -> str:
        """The paper's family: Footwear for every shoe, else the subCategory (Bags, Eyewear, ...)."""
        if self.master_category == "Footwear":
            return "Footwear"
        return self.sub_category or self.master_category or "Unknown"

    def metadata(self) -> dict[str, str]:
        """The labels stored beside the item's codes (store.METADATA_FIELDS)."""
        return {
            "article_type": self.article_type,
            "sub_category": self.sub_category,
            "master_category": self.master_category,
            "gender": self.gender,
            "usage": self.usage,
            "season": self.season,
            "colour": self.colour,
            "name": self.name,
        }


@dataclass
class LoadReport:
    """What a load kept and what it skipped, by id and reason."""

    loaded: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def fail(self, item_id: str, reason: str) -> None:
        self.failures[item_id] = reason
        log.warning("skipping item %s: %s", item_id, reason)


def _cell(row: dict[str, str | None], *names: str) -> str:
    for name in names:
        value = (row.get(name) or "").strip()
        if value:
            return value
    return ""


def read_catalogue_csv(csv_path: Path, image_dir: Path | None = None) -> list[CatalogueItem]:
    """Read either the Kaggle styles.csv schema or the minimal `id,image_path[,category]` schema.

    In the minimal schema `category` is the subCategory; `master_category`, `article_type`,
    `gender`, `usage`, `season` and `colour` columns are read when present. Every label may be empty.
    """
    return list(iter_catalogue_csv(csv_path, image_dir))


def iter_catalogue_csv(csv_path: Path, image_dir: Path | None = None) -> Iterator[CatalogueItem]:
    """The rows of a catalogue CSV one by one (see read_catalogue_csv).

    Errors are ValueErrors naming the line and what is wrong with it, never the line's text: the
    file may not be a catalogue at all, and its content must not reach the caller.
    """
    csv_path = Path(csv_path)
    # Absolute paths: a job's image references are read by workers whose working folder may differ.
    image_dir = (Path(image_dir) if image_dir else csv_path.parent / "images").resolve()
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        try:
            columns = set(reader.fieldnames or [])
            kaggle = {"id", "masterCategory", "subCategory", "articleType"} <= columns
            minimal = {"id", "image_path"} <= columns
            if not (kaggle or minimal):
                raise ValueError(
                    f"unknown schema: the header has {len(columns)} columns, not those of a "
                    "Kaggle styles.csv (id, masterCategory, subCategory, articleType, ...) or of "
                    "id,image_path[,category]"
                )
            for row in reader:
                item = _catalogue_row(row, kaggle, image_dir, reader.line_num)
                if item is not None:
                    yield item
        except UnicodeDecodeError:
            raise ValueError(f"line {reader.line_num + 1}: not UTF-8 text") from None
        except csv.Error:
            raise ValueError(f"line {reader.line_num}: malformed CSV row") from None


def _catalogue_row(
    row: dict[str, str | None], kaggle: bool, image_dir: Path, line: int
) -> CatalogueItem | None:
    item_id = (row.get("id") or "").strip()
    if not item_id:
        return None
    if kaggle:
        path = image_dir / f"{item_id}.jpg"
    else:
        given = (row.get("image_path") or "").strip()
        if not given:
            raise ValueError(f"line {line}: missing image_path")
        path = Path(given)
        # A URL stays as given, so the worker refuses it as one instead of as a missing file.
        if not path.is_absolute() and not looks_like_url(given):
            path = image_dir.parent / given
            if not path.exists() and (image_dir / given).exists():
                path = image_dir / given
    return CatalogueItem(
        item_id=item_id,
        image_path=path,
        article_type=_cell(row, "articleType", "article_type"),
        sub_category=_cell(row, "subCategory", "sub_category", "category"),
        master_category=_cell(row, "masterCategory", "master_category"),
        gender=_cell(row, "gender"),
        usage=_cell(row, "usage"),
        season=_cell(row, "season"),
        colour=_cell(row, "baseColour", "colour"),
        name=_cell(row, "productDisplayName", "name"),
    )


def decode_image(data: bytes, size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Decode image bytes to float32 HxWx3 in [0, 1]: aspect kept, padded with white.

    Raises ImageError with the reason for empty, non-image, unsupported, truncated, oversized or
    blank input. Memory stays small whatever the image: the size is checked from the header
    before decoding, JPEGs are decoded at a reduced scale (`draft`), and the image is shrunk to a
    few times the model's input before it is converted or checked.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    height, width = size
    bound = (width * SHRINK_FACTOR, height * SHRINK_FACTOR)
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"image too large: {image.width}x{image.height} pixels "
                    f"(limit {MAX_IMAGE_PIXELS:,})"
                )
            if not image.width or not image.height:
                raise ImageError("image has no pixels")
            image.draft("RGB", bound)  # JPEG only: decode at 1/2, 1/4 or 1/8 scale, never below
            image.load()
            rgb = _to_rgb_on_white(_shrink(image, bound))
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(
            "not an image (unrecognised format; JPEG, PNG, WebP and GIF are accepted)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # The decoder's own words may quote bytes of the file: they stay in the server log.
        log.debug("image decoding failed: %s", exc)
        raise ImageError("corrupt or truncated image") from exc
    if float(np.asarray(rgb, dtype=np.float32).std()) < BLANK_PIXEL_STD:
        raise ImageError("blank image (pixel standard deviation below 2)")
    fitted = ImageOps.pad(rgb, (width, height), method=Image.Resampling.BILINEAR, color="white")
    return np.asarray(fitted, dtype=np.float32) / 255.0


def _shrink(image: Image.Image, bound: tuple[int, int]) -> Image.Image:
    """The image reduced to fit `bound` (aspect kept); small images are returned as they are.

    A large image is first reduced by an integer factor in horizontal strips: converting or
    resampling it whole would copy it at full size (alpha is premultiplied to resample), while
    a strip costs a few MB. The result, at most twice the bound, is then resized bilinearly.
    """
    if image.width <= bound[0] and image.height <= bound[1]:
        return image
    alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    mode = "RGBA" if alpha else "RGB"
    factor = max(1, min(image.width // bound[0], image.height // bound[1]))
    if factor > 1:
        step = factor * 32
        reduced = Image.new(mode, (-(-image.width // factor), -(-image.height // factor)))
        for top in range(0, image.height, step):
            strip = image.crop((0, top, image.width, min(top + step, image.height)))
            reduced.paste(strip.convert(mode).reduce(factor), (0, top // factor))
        image = reduced
    else:
        image = image.convert(mode)
    image.thumbnail(bound, Image.Resampling.BILINEAR)
    return image


def _to_rgb_on_white(image: Image.Image) -> Image.Image:
    # Transparent pixels become white, like the catalogue's photo background.
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image_file(path: Path, size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_IMAGE_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise ImageError(f"missing file: {path}") from exc
    except OSError as exc:
        raise ImageError(f"unreadable file {path}: {exc.strerror or type(exc).__name__}") from exc
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise ImageError(f"file larger than {MAX_IMAGE_FILE_BYTES:,} bytes")
    return decode_image(data, size)


@dataclass
class LoadedCatalogue:
    """Items that decoded, their pixels, and the report of those that did not."""

    items: list[CatalogueItem]
    images: np.ndarray  # (n, H, W, 3) float32 in [0, 1]
    report: LoadReport

    def labels(self, name: str) -> np.ndarray:
        """One label per item: a CatalogueItem field (`sub_category`, `gender`, ...) or `family`."""
        return np.array([getattr(item, name) for item in self.items])

    @property
    def ids(self) -> list[str]:
        return [item.item_id for item in self.items]


def load_images(
    items: Sequence[CatalogueItem],
    size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    progress: bool = True,
) -> LoadedCatalogue:
    """Decode every item's image; bad ones are reported by id with the reason and skipped."""
    from tqdm import tqdm

    report = LoadReport()
    kept: list[CatalogueItem] = []
    pixels: list[np.ndarray] = []
    for item in tqdm(items, desc="loading images", unit="img", disable=not progress):
        try:
            pixels.append(load_image_file(item.image_path, size))
        except ImageError as exc:
            report.fail(item.item_id, str(exc))
            continue
        kept.append(item)
    report.loaded = len(kept)
    images = np.stack(pixels) if pixels else np.zeros((0, *size, 3), np.float32)
    return LoadedCatalogue(kept, images, report)


def read_duplicate_groups(path: Path) -> dict[str, str]:
    """Map item id -> duplicate group from a `group,id` CSV (the catalogue's duplicate_images.csv)."""
    groups: dict[str, str] = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            groups[row["id"]] = f"listed:{row['group']}"
    return groups


def duplicate_groups(
    items: Iterable[CatalogueItem], listed: dict[str, str] | None = None
) -> dict[str, str]:
    """Group key per item: the listed group if any, else the SHA-256 of the file's bytes.

    Hashing finds byte-duplicates that no list mentions; the list is honoured when given.
    """
    listed = listed or {}
    by_hash: dict[str, str] = {}
    groups: dict[str, str] = {}
    for item in items:
        try:
            digest = hashlib.sha256(item.image_path.read_bytes()).hexdigest()
        except OSError:
            digest = f"unreadable:{item.item_id}"
        key = listed.get(item.item_id) or by_hash.get(digest) or f"sha:{digest}"
        by_hash.setdefault(digest, key)
        groups[item.item_id] = key
    return groups


def deduplicate(items: Sequence[CatalogueItem], groups: dict[str, str]) -> list[CatalogueItem]:
    """Keep one item per duplicate group (the first in catalogue order)."""
    seen: set[str] = set()
    kept = []
    for item in items:
        group = groups.get(item.item_id, item.item_id)
        if group not in seen:
            seen.add(group)
            kept.append(item)
    return kept


def stratified_group_split(
    item_ids: Sequence[str],
    categories: Sequence[str],
    groups: dict[str, str],
    test_fraction: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Boolean test mask: deterministic, stratified by category, whole duplicate groups per side.

    Each group is ordered by a seeded hash of its key, so the split does not depend on
    row order and adding items to the catalogue moves no existing item across the split.
    """
    group_of = [groups.get(i, i) for i in item_ids]
    votes: dict[str, Counter[str]] = {}
    for group, category in zip(group_of, categories, strict=True):
        votes.setdefault(group, Counter())[category] += 1
    # A group whose members disagree counts under its most common category (ties by name),
    # so the split never depends on row order.
    group_category = {
        g: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for g, c in votes.items()
    }
    group_size = {g: sum(c.values()) for g, c in votes.items()}
    test_groups: set[str] = set()
    for category in sorted(set(group_category.values())):
        members = [g for g, c in group_category.items() if c == category]
        members.sort(key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
        target = round(test_fraction * sum(group_size[g] for g in members))
        taken = 0
        for group in members:
            if taken >= target:
                break
            test_groups.add(group)
            taken += group_size[group]
    return np.array([g in test_groups for g in group_of], dtype=bool)


@dataclass(frozen=True)
class SplitSpec:
    """Which items a dataset holds and how they are split. Part of every model's data fingerprint,
    so an evaluation can refuse a split that would put training items among its queries."""

    test_fraction: float = 0.15
    seed: int = 0
    # The label the split is stratified by: `sub_category` for the whole catalogue, `family` for
    # the paper's three families.
    stratify: str = "sub_category"
    families: tuple[str, ...] | None = None  # keep only these paper families; None: everything

    def to_dict(self) -> dict:
        return {
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "stratify": self.stratify,
            "families": list(self.families) if self.families else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SplitSpec:
        families = data.get("families")
        return cls(
            test_fraction=float(data["test_fraction"]),
            seed=int(data["seed"]),
            stratify=data.get("stratify", "sub_category"),
            families=tuple(families) if families else None,
        )


def data_fingerprint(items: Sequence[CatalogueItem], split: SplitSpec) -> str:
    """A short hash of the training data and its split: ids, labels, image bytes, split parameters."""
    digest = hashlib.sha256(json.dumps(split.to_dict(), sort_keys=True).encode())
    for item in sorted(items, key=lambda i: i.item_id):
        labels = (item.master_category, item.sub_category, item.article_type)
        digest.update(f"{item.item_id}|{'|'.join(labels)}|".encode())
        try:
            digest.update(hashlib.sha256(item.image_path.read_bytes()).digest())
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()[:16]


@dataclass
class PreparedDataset:
    """A deduplicated, decoded catalogue and its deterministic test mask."""

    catalogue: LoadedCatalogue
    is_test: np.ndarray
    split: SplitSpec
    fingerprint: str
    description: dict

    def labels(self, name: str, test: bool | None = None) -> np.ndarray:
        values = self.catalogue.labels(name)
        return values if test is None else values[self.is_test if test else ~self.is_test]

    def images(self, test: bool) -> np.ndarray:
        return self.catalogue.images[self.is_test if test else ~self.is_test]


def prepare_dataset(
    csv_path: Path,
    image_dir: Path | None = None,
    split: SplitSpec | None = None,
    duplicates_csv: Path | None = None,
    size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    progress: bool = True,
) -> PreparedDataset:
    """Read, filter to families, drop byte-duplicates, decode and split (stratified, by group)."""
    split = split or SplitSpec()
    items = read_catalogue_csv(csv_path, image_dir)
    total = len(items)
    if split.families:
        items = [item for item in items if item.family in set(split.families)]
    if duplicates_csv is None and (Path(csv_path).parent / "duplicate_images.csv").exists():
        duplicates_csv = Path(csv_path).parent / "duplicate_images.csv"
    listed = read_duplicate_groups(duplicates_csv) if duplicates_csv else {}
    groups = duplicate_groups(items, listed)
    unique = deduplicate(items, groups)
    loaded = load_images(unique, size, progress=progress)
    is_test = stratified_group_split(
        loaded.ids, loaded.labels(split.stratify), groups, split.test_fraction, split.seed
    )
    description = {
        "csv": str(csv_path),
        "rows": total,
        "families": list(split.families) if split.families else "all",
        "in_families": len(items),
        "after_dedup": len(unique),
        "skipped": len(loaded.report.failures),
        "skipped_ids": loaded.report.failures,
        "train": int((~is_test).sum()),
        "test": int(is_test.sum()),
        "split": split.to_dict(),
        "image_size": list(size),
    }
    return PreparedDataset(loaded, is_test, split, data_fingerprint(unique, split), description)
