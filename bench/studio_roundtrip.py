"""The studio's slider-to-image round trip in headless Chromium, through the real gateway.

    python -m bench.studio_roundtrip [--moves 60] [--warmup 3]

Starts the suite as tests/integration/test_studio_browser.py does (Redis, model server, encoder
and a worker, the 300-item fixture catalogue encoded and served, decoder, retrieval, recommender
and `python -m services.gateway`), opens the page in Debian's /usr/bin/chromium with the suite's
token, and times `--moves` slider moves one at a time: from the slider's input event to the new
design image's load event, measured in the page (performance.now()), so it covers POST
/api/decode -> DecoderService -> model server -> PNG -> <img>. Each move waits for the lists to
settle before the next. `--warmup` moves before them are not counted.

Writes the `studio_roundtrip` section of docs/benchmarks.json and .md; goal: p99 at most 42 ms,
the old ThreadingHTTPServer gateway's p99 measured the same way on this machine.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from atelier.store import CodeStore
from atelier.v1 import encoder_pb2
from bench import report
from services.common.launcher import Suite, local_suite

log = logging.getLogger("bench.studio_roundtrip")
ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "tests" / "fixtures" / "fashion-product-tiny" / "styles.csv"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
GOAL_P99_MS = 42.0
SLIDERS = 16

# One move, timed in the page: the slider's input event to the design image's load event.
TIMED_MOVE = """([dim, fraction]) => new Promise((resolve) => {
    const image = document.getElementById('design');
    const slider = document.getElementById('slider-' + dim);
    const started = performance.now();
    image.addEventListener('load', () => resolve(performance.now() - started), { once: true });
    slider.value = Number(slider.min) + fraction * (Number(slider.max) - Number(slider.min));
    slider.dispatchEvent(new Event('input', { bubbles: true }));
})"""
# How many times the page has redrawn its lists (the studio's page counts them).
LISTS = "Number(document.body.dataset.lists || 0)"


@contextmanager
def studio_suite(work: Path, extra_env: dict[str, str] | None = None) -> Iterator[Suite]:
    """The suite the studio test runs: the fixture catalogue served, the query services and
    the gateway up (its /healthz answering)."""
    env = {"GATEWAY_IMAGE_ROOT": str(CATALOGUE.parent), **(extra_env or {})}
    with local_suite(work, ROOT / "models", workers=1, extra_env=env) as suite:
        job = suite.encode(encoder_pb2.SubmitCatalogueRequest(csv_path=str(CATALOGUE)))
        CodeStore.from_url(suite.env["REDIS_URL"]).serve(job.model_version)
        for name in ("decoder", "retrieval", "recommender"):
            suite.start_service(name)
        suite.start_gateway()
        yield suite


def settle(page, lists_before: int) -> None:
    """Wait until the page has redrawn its lists since `lists_before`, without an error."""
    page.wait_for_function(f"{LISTS} > {lists_before}", timeout=30_000)
    page.wait_for_timeout(100)
    page.wait_for_function("!document.getElementById('error').textContent", timeout=10_000)


def signed_in(browser, url: str, token: str):
    """A page of the studio at `url` with `token` entered: without it the API answers 401 and
    the page asks for one; with it, everything loads (the lists drawn once)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_function(
        "document.getElementById('error').textContent.includes('paste a token')",
        timeout=30_000,
    )
    page.fill("#token", token)
    page.click("#token-form button")
    page.wait_for_function(f"{LISTS} >= 1", timeout=30_000)
    return page


def measure(url: str, token: str, moves: int, warmup: int) -> list[float]:
    """Milliseconds per timed move (after `warmup` untimed ones)."""
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    samples: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = signed_in(browser, url, token)
            for move in range(warmup + moves):
                lists = page.evaluate(f"() => {LISTS}")
                dim, fraction = int(rng.integers(0, SLIDERS)), float(rng.uniform(0.05, 0.95))
                elapsed = page.evaluate(TIMED_MOVE, [dim, fraction])
                if move >= warmup:
                    samples.append(elapsed)
                settle(page, lists)
        finally:
            browser.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--moves", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"Chromium not found at {CHROMIUM}: install Debian's chromium package")
    command = "python -m bench.studio_roundtrip " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as work, studio_suite(Path(work)) as suite:
        url = f"http://{suite.env['GATEWAY_ADDR']}/"
        log.info("suite up; timing %d moves after %d warm-up moves", args.moves, args.warmup)
        started = time.monotonic()
        samples = measure(url, suite.token or "", args.moves, args.warmup)
        log.info("measured in %.0f s", time.monotonic() - started)
    figures = {
        "moves": len(samples),
        "warmup_moves": args.warmup,
        "p50_ms": round(float(np.percentile(samples, 50)), 2),
        "p99_ms": round(float(np.percentile(samples, 99)), 2),
        "max_ms": round(max(samples), 2),
        "goal_p99_ms": GOAL_P99_MS,
        "goal_met": bool(np.percentile(samples, 99) <= GOAL_P99_MS),
        "notes": "Headless Chromium: slider input event -> POST /api/decode (FastAPI under "
        "uvicorn) -> DecoderService -> model server -> PNG -> <img> load event, on the 300-item "
        "fixture catalogue, one move at a time. The goal is the old ThreadingHTTPServer "
        "gateway's p99, measured the same way.",
    }
    report.update("studio_roundtrip", figures, command.strip())
    print({k: v for k, v in figures.items() if k != "notes"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
