"""Peak memory of decoding the worst image the encoder accepts, against a catalogue photo.

    python -m bench.image_decoding

Each decode runs in a fresh subprocess that resets its resident-set high-water mark just before
the one call and reads it after (/proc/self/status VmHWM), so the figure is that call's own peak. The worst accepted images sit just
under the pixel cap (MAX_IMAGE_PIXELS) in each accepted format, RGBA where the format has alpha;
they compress to a few hundred KB, well inside MAX_INLINE_IMAGE_BYTES. The `previous_*` rows
run the previous decoder (the blank check on the full image in float32) on the same PNG and
WebP, in the same run, for comparison. Writes key `image_decoding` to docs/reliability.*.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from atelier.catalogue import (
    BLANK_PIXEL_STD,
    DEFAULT_IMAGE_SIZE,
    MAX_IMAGE_PIXELS,
    _to_rgb_on_white,
    decode_image,
)
from bench import report

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample-catalogue" / "images" / "1532.jpg"


def previous_decode(data: bytes, size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """The decoder before this change: full decode, full-size conversion, float32 blank check."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = _to_rgb_on_white(image)
    height, width = size
    fitted = ImageOps.pad(rgb, (width, height), method=Image.Resampling.BILINEAR, color="white")
    pixels = np.asarray(fitted, dtype=np.float32) / 255.0
    if float(np.asarray(rgb, dtype=np.float32).std()) < BLANK_PIXEL_STD:
        raise ValueError("blank")
    return pixels


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def child(path: Path, decoder: str) -> None:
    data = path.read_bytes()
    function = previous_decode if decoder == "previous" else decode_image
    # Reset the high-water mark to the current RSS (Linux clear_refs "5"): the peak measured
    # is this call's, not the imports' nor the parent's (getrusage's maxrss survives exec).
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mib("VmRSS")
    started = time.perf_counter()
    pixels = function(data)
    seconds = time.perf_counter() - started
    after = _status_mib("VmHWM")
    print(
        json.dumps(
            {
                "peak_mib": round(after, 1),
                "decode_peak_mib": round(after - before, 1),
                "seconds": round(seconds, 3),
                "shape": list(pixels.shape),
            }
        )
    )


def worst_images(folder: Path) -> dict[str, Path]:
    """Just under the pixel cap: a square side with side² ≤ MAX_IMAGE_PIXELS, with content."""
    side = math.isqrt(MAX_IMAGE_PIXELS)
    ramp = np.linspace(40, 230, side, dtype=np.float32).astype(np.uint8)
    rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, :]), axis=-1)
    rgb = np.ascontiguousarray(rgb)
    rgb[side // 3 : 2 * side // 3, side // 3 : 2 * side // 3] = (200, 30, 30)
    alpha = np.full((side, side, 1), 255, np.uint8)
    alpha[: side // 8] = 0  # a transparent band: the alpha path is taken
    rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA")
    paths = {
        "png_rgba": (rgba, "PNG", {"compress_level": 9}),
        "jpeg": (rgba.convert("RGB"), "JPEG", {"quality": 85}),
        "webp_rgba": (rgba, "WEBP", {"quality": 50, "method": 0}),
        "gif": (rgba.convert("RGB").quantize(64), "GIF", {}),
    }
    written = {}
    for name, (image, fmt, options) in paths.items():
        path = folder / f"{name}.{fmt.lower()}"
        image.save(path, fmt, **options)
        written[name] = path
    return written


def measure(path: Path, decoder: str = "current") -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "bench.image_decoding", "--child", str(path), decoder],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "DECODER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return 0
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("writing the worst accepted images ...", flush=True)
        images = worst_images(Path(tmp))
        figures["catalogue_photo"] = {"bytes": SAMPLE.stat().st_size, **measure(SAMPLE)}
        print("catalogue photo:", figures["catalogue_photo"], flush=True)
        for name, path in images.items():
            with Image.open(path) as image:
                size = f"{image.width}x{image.height} {image.mode}"
            figures[name] = {"bytes": path.stat().st_size, "image": size, **measure(path)}
            print(f"{name}:", figures[name], flush=True)
        for name in ("png_rgba", "webp_rgba"):
            figures[f"previous_{name}"] = {
                "bytes": images[name].stat().st_size,
                **measure(images[name], "previous"),
            }
            print(f"previous decoder on {name}:", figures[f"previous_{name}"], flush=True)
    current = [k for k in figures if k != "catalogue_photo" and not k.startswith("previous_")]
    worst = max(current, key=lambda k: figures[k]["decode_peak_mib"])
    figures["worst_accepted"] = worst
    figures["worst_decode_peak_mib"] = figures[worst]["decode_peak_mib"]
    figures["previous_worst_decode_peak_mib"] = max(
        figures[f"previous_{name}"]["decode_peak_mib"] for name in ("png_rgba", "webp_rgba")
    )
    for name in ("png_rgba", "webp_rgba"):
        figures[f"{name}_previous_over_current"] = round(
            figures[f"previous_{name}"]["decode_peak_mib"]
            / max(figures[name]["decode_peak_mib"], 1.0),
            2,
        )
    figures["notes"] = (
        "Peak resident memory of one decode_image call in a fresh process (VmHWM, reset just "
        "before the call; peak_mib includes the interpreter and imports), for a "
        "catalogue photo and for images just under the 40 M-pixel cap in each accepted format. "
        "previous_*: the previous decoder (full-size conversion and a float32 blank check) on "
        "the same images, measured in the same run. Pillow's WebP decoder holds several "
        "full-size copies, so an RGBA WebP is the worst accepted image."
    )
    command = "python -m bench." + Path(__file__).stem
    report.update("image_decoding", figures, command, report="reliability")
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
