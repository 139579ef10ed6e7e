"""The gateway serves catalogue files only when their magic bytes say they are images."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.gateway.server import image_type


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_images_are_recognised_by_their_magic_bytes(fmt, expected):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, fmt)
    assert image_type(buffer.getvalue()) == expected


@pytest.mark.parametrize(
    "data", [b"", b"root:x:0:0:root:/root:/bin/bash\n", b"<html><script>", b"RIFF\0\0\0\0WAVE"]
)
def test_anything_else_is_not_served(data):
    assert image_type(data) is None
