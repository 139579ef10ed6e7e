"""The design studio end to end in headless Chromium: sliders, live image, lists, upload.

The slider-to-image round-trip time is a benchmark, not a test: `python -m bench.studio_roundtrip`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.studio_roundtrip import CHROMIUM, CHROMIUM_ARGS, settle, signed_in, studio_suite

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with studio_suite(tmp_path_factory.mktemp("studio")) as suite:
        yield f"http://{suite.env['GATEWAY_ADDR']}/", suite.token


@pytest.fixture(scope="module")
def page(studio):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install Debian's chromium package (make test does in CI)"
        )
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        url, token = studio
        page = signed_in(browser, url, token)
        assert page.evaluate("() => sessionStorage.getItem('atelier-token')") == token
        yield page
        browser.close()


def _state(page) -> dict:
    return page.evaluate(
        """() => ({
            decodes: Number(document.getElementById('design').dataset.decodes || 0),
            lists: Number(document.body.dataset.lists || 0),
            similar: [...document.querySelectorAll('#similar .card')].map(c => c.dataset.itemId),
            pairings: [...document.querySelectorAll('#pairings .pairing')].map(r => [...r.children].map(c => c.dataset.itemId)),
            error: document.getElementById('error').textContent,
        })"""
    )


def _move(page, dim: int, fraction: float) -> None:
    page.evaluate(
        """([dim, fraction]) => {
            const slider = document.getElementById('slider-' + dim);
            const lo = Number(slider.min), hi = Number(slider.max);
            slider.value = lo + fraction * (hi - lo);
            slider.dispatchEvent(new Event('input', { bubbles: true }));
        }""",
        [dim, fraction],
    )


def _pixels(page) -> str:
    """What the design image shows, read back through a canvas."""
    return page.evaluate(
        """() => {
            const image = document.getElementById('design');
            const canvas = document.createElement('canvas');
            canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
            canvas.getContext('2d').drawImage(image, 0, 0);
            return canvas.toDataURL();
        }"""
    )


def test_slider_changes_image_and_both_lists(page):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "studio-start.png"), full_page=True)
    before = _state(page)
    design_before = page.evaluate("() => document.getElementById('design').src")
    assert before["similar"] and before["pairings"] and not before["error"]
    # the catalogue photos come through the gateway's image route
    page.wait_for_function(
        "[...document.querySelectorAll('#similar img')].some(i => i.complete && i.naturalWidth > 0)",
        timeout=10_000,
    )
    _move(page, 0, 0.0)  # the family axes move the design furthest
    settle(page, before["lists"])
    pixels_before = _pixels(page)
    _move(page, 0, 1.0)
    settle(page, _state(page)["lists"])
    pixels_after = _pixels(page)
    after = _state(page)
    assert pixels_after != pixels_before
    assert page.evaluate("() => document.getElementById('design').src") != design_before
    assert after["similar"] != before["similar"]
    assert after["pairings"] != before["pairings"]
    page.screenshot(path=str(ARTIFACTS / "studio-after-slider.png"), full_page=True)


def test_upload_a_photo(page, tiny_images):
    before = _state(page)
    photo = tiny_images / "1164.jpg"
    page.set_input_files("#upload", str(photo))
    page.wait_for_function(
        "document.getElementById('status').textContent.includes('uploaded photo')", timeout=30_000
    )
    settle(page, before["lists"])
    after = _state(page)
    assert not after["error"]
    assert after["similar"] and after["similar"] != before["similar"]
    page.screenshot(path=str(ARTIFACTS / "studio-after-upload.png"), full_page=True)
