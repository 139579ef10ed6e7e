"""Catalogue loading: both CSV schemas, per-id errors for bad images, preprocessing and the split."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.catalogue import (
    ImageError,
    SplitSpec,
    data_fingerprint,
    decode_image,
    duplicate_groups,
    load_images,
    prepare_dataset,
    read_catalogue_csv,
    stratified_group_split,
)


def _jpeg(width: int = 60, height: int = 80, colour=(200, 30, 30)) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    image.paste(Image.new("RGB", (width // 2, height // 2), colour), (width // 4, height // 4))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def test_kaggle_schema_reads_every_label(tiny_csv):
    items = read_catalogue_csv(tiny_csv)
    assert len(items) == 300
    by_family, by_sub = Counter(), Counter()
    for item in items:
        by_family[item.family] += 1
        by_sub[item.sub_category] += 1
        assert item.image_path.exists()
    # Shoes + Sandal are the paper's Footwear family; the rest keep their subCategory.
    assert by_family == {"Footwear": 100, "Bags": 50, "Eyewear": 50, "Watches": 50, "Topwear": 50}
    assert by_sub == {s: 50 for s in ("Shoes", "Sandal", "Bags", "Eyewear", "Watches", "Topwear")}
    first = items[0]
    assert first.master_category and first.article_type and first.gender and first.usage
    assert set(first.metadata()) == {
        "article_type", "sub_category", "master_category", "gender", "usage", "season", "colour", "name"
    }  # fmt: skip


def test_minimal_schema(tmp_path, tiny_images):
    source = sorted(tiny_images.iterdir())[:3]
    rows = ["id,image_path,category"] + [f"a{i},{p},Shoes" for i, p in enumerate(source)]
    csv_path = tmp_path / "catalogue.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    items = read_catalogue_csv(csv_path)
    assert [i.item_id for i in items] == ["a0", "a1", "a2"]
    assert all(i.sub_category == "Shoes" and i.article_type == "" for i in items)
    assert load_images(items, progress=False).report.loaded == 3


def test_minimal_schema_labels_are_optional(tmp_path, tiny_images):
    source = sorted(tiny_images.iterdir())[0]
    csv_path = tmp_path / "catalogue.csv"
    csv_path.write_text(f"id,image_path,gender\nnew1,{source},Women\n")
    (item,) = read_catalogue_csv(csv_path)
    assert item.sub_category == "" and item.master_category == "" and item.gender == "Women"


def test_unknown_schema_is_a_clear_error(tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("sku,picture\n1,x.jpg\n")
    with pytest.raises(ValueError, match="unknown schema"):
        read_catalogue_csv(csv_path)


def test_decode_letterboxes_with_white():
    pixels = decode_image(_jpeg(60, 80), (80, 64))
    assert pixels.shape == (80, 64, 3) and pixels.dtype == np.float32
    # 60 wide into 64: two white columns each side; the content is not stretched.
    assert np.allclose(pixels[:, :2], 1.0) and np.allclose(pixels[:, -2:], 1.0)
    assert pixels[40, 32, 1] < 0.5  # the red square survives in the centre


def test_png_with_alpha_is_composited_on_white():
    image = Image.new("RGBA", (60, 80), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (20, 20), (0, 0, 255, 255)), (20, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    pixels = decode_image(buffer.getvalue())
    assert np.allclose(pixels[5, 10], 1.0)  # transparent -> white, not black
    assert pixels[40, 32, 2] > 0.9 and pixels[40, 32, 0] < 0.1


def test_grayscale_becomes_three_channels():
    image = Image.new("L", (60, 80), 255)
    image.paste(Image.new("L", (20, 20), 10), (20, 30))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    assert decode_image(buffer.getvalue()).shape == (80, 64, 3)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image"),
        (_jpeg()[:200], "corrupt or truncated"),
        (_jpeg(colour=(255, 255, 255)), "blank image"),
    ],
)
def test_bad_bytes_give_a_reason(payload, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(payload)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_image_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000), 0).save(buffer, "PNG")
    with pytest.raises(ImageError, match="too large"):
        decode_image(buffer.getvalue())


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "ICO"])
def test_formats_outside_the_whitelist_are_refused(fmt):
    image = Image.open(io.BytesIO(_jpeg())).convert("RGB")
    with pytest.raises(ImageError, match=r"not an image .*JPEG, PNG, WebP and GIF"):
        decode_image(_encoded(image, fmt))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_large_images_are_shrunk_before_conversion_and_match_small_ones(fmt):
    """A 3000x4000 photo gives the model nearly what its 60x80 version gives (draft/thumbnail)."""
    small = Image.open(io.BytesIO(_jpeg(60, 80))).convert("RGB")
    large = small.resize((3000, 4000), Image.Resampling.NEAREST)
    expected = decode_image(_encoded(small, "PNG"))
    got = decode_image(_encoded(large, fmt))
    assert got.shape == (80, 64, 3)
    assert float(np.abs(got - expected).mean()) < 0.03


def test_blank_check_runs_on_the_shrunk_image():
    """A near-white 4000x4000 photo is still blank once shrunk; a real one is not."""
    rng = np.random.default_rng(0)
    noise = (255 - rng.integers(0, 2, (4000, 4000, 3))).astype(np.uint8)  # std < 1 at full size
    with pytest.raises(ImageError, match="blank image"):
        decode_image(_encoded(Image.fromarray(noise), "PNG"))
    photo = Image.open(io.BytesIO(_jpeg(60, 80))).resize((3000, 4000))
    assert decode_image(_encoded(photo, "JPEG")).shape == (80, 64, 3)


def test_decoder_messages_never_quote_the_file():
    """PIL's own messages may quote a file's bytes (a chunk name); the reasons never do."""
    png = _encoded(Image.open(io.BytesIO(_jpeg())).convert("RGB"), "PNG")
    idat = png.index(b"IDAT")
    renamed = png[:idat] + b"S3CR" + png[idat + 4 :]
    garbled = png[: idat + 8] + bytes(64) + png[idat + 72 :]
    reasons = []
    for payload in (renamed, garbled):
        with pytest.raises(ImageError) as error:
            decode_image(payload)
        reasons.append(str(error.value))
    assert reasons[1] == "corrupt or truncated image"
    assert not any("S3CR" in r or "\\x" in r for r in reasons)


def test_csv_errors_name_the_line_never_its_text(tmp_path):
    passwd = tmp_path / "passwd.csv"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/sh\n")
    with pytest.raises(ValueError, match="unknown schema") as error:
        read_catalogue_csv(passwd)
    assert "root" not in str(error.value) and "bash" not in str(error.value)
    short = tmp_path / "short.csv"
    short.write_text("id,image_path,category\na1,x.jpg,Shoes\nsecret-id\n")
    with pytest.raises(ValueError, match=r"^line 3: missing image_path$"):
        read_catalogue_csv(short)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"id,image_path\n1,\xff\xfe\xfa.jpg\n")
    with pytest.raises(ValueError, match=r"^line \d+: not UTF-8 text$"):
        read_catalogue_csv(binary)
    huge = tmp_path / "huge.csv"
    huge.write_text("id,image_path\n1," + "s" * 200_000 + "\n")  # past csv's field limit
    with pytest.raises(ValueError, match=r"^line \d+: malformed CSV row$"):
        read_catalogue_csv(huge)


def test_bad_rows_are_reported_by_id_and_skipped(tmp_path, tiny_images):
    good = sorted(tiny_images.iterdir())[0]
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    rows = [
        "id,image_path,category",
        f"ok,{good},Shoes",
        f"zero,{tmp_path / 'zero.jpg'},Shoes",
        f"text,{tmp_path / 'text.jpg'},Shoes",
        f"cut,{tmp_path / 'cut.jpg'},Shoes",
        f"gone,{tmp_path / 'missing.jpg'},Shoes",
    ]
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    loaded = load_images(read_catalogue_csv(csv_path), progress=False)
    assert loaded.ids == ["ok"]
    assert loaded.images.shape == (1, 80, 64, 3)
    failures = loaded.report.failures
    assert set(failures) == {"zero", "text", "cut", "gone"}
    assert "empty" in failures["zero"]
    assert "not an image" in failures["text"]
    assert "truncated" in failures["cut"]
    assert "missing" in failures["gone"]


def test_split_is_deterministic_stratified_and_keeps_duplicates_together(tmp_path, tiny_csv):
    items = read_catalogue_csv(tiny_csv)
    ids = [i.item_id for i in items]
    categories = [i.family for i in items]
    groups = duplicate_groups(items)
    # Declare pairs of items duplicates: each pair must land on one side.
    for a, b in zip(ids[0:40:2], ids[1:40:2], strict=True):
        groups[b] = groups[a]
    first = stratified_group_split(ids, categories, groups, 0.2, seed=3)
    again = stratified_group_split(
        list(reversed(ids)), list(reversed(categories)), groups, 0.2, seed=3
    )
    assert np.array_equal(first, again[::-1])
    for a, b in zip(ids[0:40:2], ids[1:40:2], strict=True):
        assert first[ids.index(a)] == first[ids.index(b)]
    for category in set(categories):
        share = first[np.array(categories) == category].mean()
        assert 0.1 <= share <= 0.3
    assert not np.array_equal(first, stratified_group_split(ids, categories, groups, 0.2, seed=4))


def test_hashing_finds_byte_duplicates(tmp_path, tiny_images):
    source = sorted(tiny_images.iterdir())[0]
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(source.read_bytes())
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(f"id,image_path,category\nx,{source},Shoes\ny,{copy},Shoes\n")
    groups = duplicate_groups(read_catalogue_csv(csv_path))
    assert groups["x"] == groups["y"]


def test_prepare_dataset_filters_dedups_and_describes(tiny_csv):
    split = SplitSpec(stratify="family", families=("Footwear", "Bags", "Eyewear"))
    dataset = prepare_dataset(tiny_csv, split=split, progress=False)
    assert dataset.description["in_families"] == 200
    assert len(dataset.catalogue.items) == 200
    assert dataset.is_test.sum() == dataset.description["test"] > 0
    assert set(dataset.labels("family")) == {"Footwear", "Bags", "Eyewear"}
    assert Path(dataset.description["csv"]) == tiny_csv
    assert dataset.description["split"] == split.to_dict()


def test_whole_catalogue_split_is_stratified_by_sub_category(tiny_csv):
    dataset = prepare_dataset(tiny_csv, progress=False)
    assert len(dataset.catalogue.items) == 300
    subs = dataset.labels("sub_category")
    for sub in set(subs):
        assert 0.1 <= dataset.is_test[subs == sub].mean() <= 0.2


def test_fingerprint_covers_the_split(tiny_csv):
    items = read_catalogue_csv(tiny_csv)[:20]
    base = data_fingerprint(items, SplitSpec())
    assert data_fingerprint(items, SplitSpec()) == base
    assert data_fingerprint(items, SplitSpec(seed=1)) != base
    assert data_fingerprint(items, SplitSpec(test_fraction=0.2)) != base
    assert data_fingerprint(items[1:], SplitSpec()) != base
