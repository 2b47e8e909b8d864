"""Image decoding limits and preprocessing, compared bit for bit with transformers' CLIP processor."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from services.embedder.manifest import Preprocess
from services.embedder.preprocess import DecodeLimits, Preprocessor, decode_image
from tagalong.runtime.errors import InvalidArgument
from tests.fixtures.embedder import encode_image

LIMITS = DecodeLimits()
EFFNET = Preprocess(resize=256, crop=224, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))


def _reference(data_bytes: bytes, cfg: Preprocess) -> np.ndarray:
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.resize}, crop_size={"height": cfg.crop, "width": cfg.crop},
        image_mean=list(cfg.mean), image_std=list(cfg.std),
    )
    image = Image.open(io.BytesIO(data_bytes))
    return np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0])


def _rgba() -> np.ndarray:
    rgba = np.dstack([data.coffee(), np.linspace(0, 255, 600, dtype=np.uint8)[None, :].repeat(400, 0)])
    return np.ascontiguousarray(rgba)


@pytest.mark.parametrize(
    ("payload", "cfg"),
    [
        pytest.param(lambda: encode_image(data.astronaut(), "JPEG", quality=90), Preprocess(), id="square-jpeg"),
        pytest.param(lambda: encode_image(data.coffee(), "PNG"), Preprocess(), id="landscape-png"),
        pytest.param(lambda: encode_image(np.ascontiguousarray(data.rocket().transpose(1, 0, 2)), "WEBP",
                                          quality=90), Preprocess(), id="portrait-webp"),
        pytest.param(lambda: encode_image(data.camera(), "PNG"), Preprocess(), id="grayscale"),
        pytest.param(lambda: encode_image(_rgba(), "PNG"), Preprocess(), id="rgba-over-white"),
        pytest.param(lambda: encode_image(data.chelsea()[:40, :33], "BMP"), Preprocess(), id="tiny-upscaled"),
        pytest.param(lambda: encode_image(data.chelsea(), "JPEG"), EFFNET, id="effnet-256-224"),
    ],
)
def test_matches_the_reference_clip_processor_bit_for_bit(payload, cfg: Preprocess) -> None:  # type: ignore[no-untyped-def]
    raw = payload()
    ours = Preprocessor(cfg)(raw, LIMITS)
    ref = _reference(raw, cfg)
    assert ours.dtype == np.float32 and ours.shape == (3, cfg.crop, cfg.crop)
    assert ours.shape == ref.shape
    assert ours.tobytes() == ref.astype(np.float32).tobytes()


def test_exif_orientation_is_applied() -> None:
    img = data.chelsea()  # 300 x 451, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    raw = encode_image(img, "JPEG", exif=exif.tobytes())
    decoded = decode_image(raw, LIMITS)
    assert decoded.size == (300, 451)  # upright: portrait now
    assert decode_image(encode_image(img, "JPEG"), LIMITS).size == (451, 300)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge canvas, with almost no data: what a decompression bomb looks like."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(
    ("raw", "limits", "reason"),
    [
        pytest.param(b"", LIMITS, "empty image", id="empty"),
        pytest.param(b"this is not an image", LIMITS, "not a decodable image", id="garbage"),
        pytest.param(encode_image(data.astronaut(), "JPEG")[:2000], LIMITS, "corrupt", id="truncated-jpeg"),
        pytest.param(_bomb_png(8_000, 8_000), LIMITS, "more than the limit", id="decompression-bomb"),
        pytest.param(_bomb_png(60_000, 60_000), LIMITS, "decompression bomb", id="pillow-bomb-guard"),
        pytest.param(encode_image(data.coffee(), "PNG"), DecodeLimits(max_pixels=100_000), "240000 pixels",
                     id="too-many-pixels"),
        pytest.param(encode_image(data.coffee(), "PNG"), DecodeLimits(max_bytes=1000), "bytes", id="too-many-bytes"),
        pytest.param(encode_image(data.coffee(), "PNG"), DecodeLimits(formats=("JPEG",)), "allowed formats",
                     id="format-not-allowed"),
    ],
)
def test_bad_images_are_invalid_argument_with_a_reason(raw: bytes, limits: DecodeLimits, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_image(raw, limits)
    assert reason in info.value.message


def test_bomb_is_refused_before_decoding_pixels() -> None:
    raw = _bomb_png(8_000, 8_000)  # 64 megapixels claimed by a hundred bytes
    started = time.perf_counter()
    with pytest.raises(InvalidArgument, match="64000000 pixels"):
        decode_image(raw, LIMITS)
    assert time.perf_counter() - started < 1.0


def test_first_frame_of_an_animated_gif() -> None:
    frames = [Image.fromarray(np.full((64, 80, 3), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = Preprocessor(Preprocess())(buf.getvalue(), LIMITS)
    assert out.shape == (3, 224, 224)
    assert np.isfinite(out).all()
