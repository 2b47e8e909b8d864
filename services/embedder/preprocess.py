"""Image decoding with explicit limits and CLIP-style preprocessing (resize, centre crop, normalise).

Matches transformers' CLIPImageProcessor (its PIL backend) bit for bit: the same Pillow resize on uint8
RGB, the same crop offsets, the same float64 rescale then float32 normalisation.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.embedder.manifest import Preprocess
from tagalong.runtime.errors import InvalidArgument

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class DecodeLimits:
    """What an encoded image may be: its size in bytes and pixels, and its format."""

    max_pixels: int = 40_000_000
    max_bytes: int = 32 * 1024 * 1024
    # Long side / short side kept before resizing. Resizing the short side to the model's size scales the
    # long side by the same factor: a 100 KB 1x100000 PNG would become a 5-gigapixel image before the
    # centre crop. Longer images are cut to their centre first (the centre crop keeps only that anyway).
    max_aspect_ratio: float = 50.0
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def resample_filter(name: str) -> Image.Resampling:
    try:
        return _RESAMPLE[name.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; one of {sorted(_RESAMPLE)}") from None


def decode_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Encoded bytes -> an RGB PIL image, upright per EXIF; InvalidArgument with the reason otherwise."""
    if not data:
        raise InvalidArgument("empty image")
    if len(data) > limits.max_bytes:
        raise InvalidArgument(f"image is {len(data)} bytes, more than the limit of {limits.max_bytes}")
    try:
        # formats= limits which decoders Pillow even tries; open() reads only the header.
        img = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except UnidentifiedImageError:
        raise InvalidArgument(f"not a decodable image (allowed formats: {', '.join(limits.formats)})") from None
    except Image.DecompressionBombError as err:
        raise InvalidArgument(f"image refused as a decompression bomb: {err}") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure is the caller's bad image
        raise InvalidArgument(f"cannot read image: {err}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidArgument("image has no pixels")
    # Checked before any pixel is decoded: a tiny file may claim a gigantic canvas.
    if width * height > limits.max_pixels:
        raise InvalidArgument(
            f"image is {width}x{height} = {width * height} pixels, more than the limit of {limits.max_pixels}"
        )
    try:
        img.load()
        upright: Image.Image = ImageOps.exif_transpose(img) or img
        return to_rgb(_bounded_aspect(upright, limits.max_aspect_ratio))
    except InvalidArgument:
        raise
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data
        raise InvalidArgument(f"corrupt {img.format or 'image'} data: {err}") from None


def _bounded_aspect(img: Image.Image, max_ratio: float) -> Image.Image:
    """The image, or its centre cut to max_ratio:1 when it is longer (ordinary images are untouched)."""
    width, height = img.size
    short = min(width, height)
    keep = max(short, int(short * max_ratio))
    if width > keep:
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    if height > keep:
        top = (height - keep) // 2
        return img.crop((0, top, width, top + keep))
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, compositing any transparency over white (as the reference CLIP processor does)."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def resized_size(width: int, height: int, cfg: Preprocess) -> tuple[int, int]:
    """(width, height) after resizing: shortest side to cfg.resize (long side truncated), or exact."""
    if cfg.resize_mode == "exact":
        return cfg.crop, cfg.crop
    if width <= height:
        return cfg.resize, int(cfg.resize * height / width)
    return int(cfg.resize * width / height), cfg.resize


class Preprocessor:
    """RGB image -> normalised float32 CHW tensor of the model's input size."""

    def __init__(self, cfg: Preprocess) -> None:
        self.cfg = cfg
        self._filter = resample_filter(cfg.interpolation)
        # Pixels are uint8, so rescale + normalise is a 256-entry table per channel, computed with exactly
        # the reference's arithmetic (float64 rescale, float32 cast, float32 (x - mean) / std): a gather
        # then gives the same bits as the reference at a fraction of the cost.
        scaled = (np.arange(256, dtype=np.float64) * cfg.rescale_factor).astype(np.float32)
        mean = np.asarray(cfg.mean, dtype=np.float32)
        std = np.asarray(cfg.std, dtype=np.float32)
        self._table = np.stack([(scaled - mean[c]) / std[c] for c in range(3)]).astype(np.float32)

    def pixels(self, img: Image.Image) -> np.ndarray:
        cfg = self.cfg
        img = img.resize(resized_size(img.width, img.height, cfg), resample=self._filter)
        arr = _center_crop(np.asarray(img, dtype=np.uint8), cfg.crop)
        out = np.empty((3, cfg.crop, cfg.crop), dtype=np.float32)
        for c in range(3):
            np.take(self._table[c], arr[:, :, c], out=out[c])
        return out

    def __call__(self, data: bytes, limits: DecodeLimits) -> np.ndarray:
        return self.pixels(decode_image(data, limits))

    def batch(self, images: Iterable[Image.Image]) -> np.ndarray:
        return np.stack([self.pixels(img) for img in images])


def _center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre crop of an HWC array; zero-padded when the image is smaller (as the reference does)."""
    height, width = arr.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    if top >= 0 and left >= 0:
        return arr[top : top + size, left : left + size]
    new_h, new_w = max(size, height), max(size, width)
    padded = np.zeros((new_h, new_w, arr.shape[2]), dtype=arr.dtype)
    pad_top, pad_left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
    padded[pad_top : pad_top + height, pad_left : pad_left + width] = arr
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return padded[top : top + size, left : left + size]
