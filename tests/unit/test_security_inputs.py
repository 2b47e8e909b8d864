"""Input hardening that needs no server: an image's shape must not let a tiny file buy unbounded work."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.embedder.manifest import Preprocess
from services.embedder.preprocess import DecodeLimits, decode_image, resized_size
from tagalong.runtime.errors import InvalidArgument


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("width", "height"), [pytest.param(1, 100_000, id="1x100000"),
                                               pytest.param(100_000, 1, id="100000x1"),
                                               pytest.param(2, 40_000, id="2x40000")])
def test_extreme_aspect_ratio_is_refused_or_resized_to_a_bounded_size(width: int, height: int) -> None:
    """A ~100 KB PNG of 1x100000 pixels is far under the 40 Mpx limit, but resizing its short side to 224
    would make a 224x22,400,000 (5 Gpx, 15 GB) image before the centre crop: it must be refused as
    INVALID_ARGUMENT, or resized to a size of the order of the crop."""
    cfg = Preprocess()
    data = _png(width, height)
    assert len(data) < 200_000
    try:
        img = decode_image(data, DecodeLimits())
    except InvalidArgument:
        return
    w, h = resized_size(img.width, img.height, cfg)
    assert w * h <= 64 * cfg.resize * cfg.crop, f"{width}x{height} would be resized to {w}x{h} = {w * h} pixels"
