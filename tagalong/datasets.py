"""Real labelled image collections that install offline, as (name, label, encoded bytes) items.

Fashion-MNIST from Debian's `dataset-fashion-mnist` (IDX files), CIFAR-10 JPEG archives from
../shared/datasets, or any folder with one sub-folder per class. Used by the demo and the benchmarks.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class LabeledImage:
    """One image with its true label."""

    name: str
    label: str
    data: bytes


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    _zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if dtype_code != 0x08:
        raise ValueError(f"{path}: unsupported IDX type {dtype_code:#x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _take(items: Iterator[LabeledImage], per_class: int | None) -> list[LabeledImage]:
    counts: dict[str, int] = defaultdict(int)
    out = []
    for item in items:
        if per_class is not None and counts[item.label] >= per_class:
            continue
        counts[item.label] += 1
        out.append(item)
    return out


def fashion_mnist_arrays(split: str = "test", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as (n, 28, 28) uint8 pixels and (n,) class indices (split "test": 10k, "train": 60k).

    root None: Debian's `dataset-fashion-mnist` folder, installed here when it is missing (as root)."""
    installable = root is None
    root = FASHION_MNIST_DIR if root is None else root
    prefix = "t10k" if split == "test" else "train"
    images_file = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images_file.exists() and installable:
        from tagalong.devstack.debian import apt_install

        apt_install("dataset-fashion-mnist", f"{images_file} is missing")
    if not images_file.exists():
        raise FileNotFoundError(f"{images_file} is missing: apt-get install dataset-fashion-mnist")
    return _read_idx(images_file), _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")


def fashion_mnist(split: str = "test", per_class: int | None = None,
                  root: Path | None = None) -> list[LabeledImage]:
    """Fashion-MNIST as PNG bytes (split "test": 10k images, "train": 60k); root as in fashion_mnist_arrays."""
    images, labels = fashion_mnist_arrays(split, root)

    counts: dict[int, int] = defaultdict(int)
    out = []
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        if per_class is not None and counts[int(label)] >= per_class:
            continue
        counts[int(label)] += 1
        out.append(LabeledImage(f"fashion-mnist/{split}/{i:05d}.png", FASHION_CLASSES[int(label)], _png(pixels)))
    return out


def cifar10(archive: Path, per_class: int | None = None) -> list[LabeledImage]:
    """CIFAR-10 JPEGs straight from a `<split>/<class>/NNNN.jpg` tar.gz archive."""

    found = []
    # Read in archive order: seeking backwards in a gzip stream decompresses it again from the start.
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES and len(parts) >= 2:
                f = tar.extractfile(member)
                if f is not None:
                    found.append(LabeledImage(member.name, parts[-2], f.read()))
    found.sort(key=lambda item: item.name)
    return _take(iter(found), per_class)


def folder_per_class(root: Path, per_class: int | None = None) -> list[LabeledImage]:
    """Any folder with one sub-folder per class (the folder name is the label)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")

    def items() -> Iterator[LabeledImage]:
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(class_dir.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    yield LabeledImage(str(path), class_dir.name, path.read_bytes())

    found = _take(items(), per_class)
    if not found:
        raise FileNotFoundError(f"{root} has no images in class sub-folders")
    return found
