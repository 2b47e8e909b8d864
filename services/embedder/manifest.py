"""The model folder's manifest: what was exported, how to preprocess, and the checksum of every file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
Variant = Literal["fp32", "fp16", "int8"]
VARIANTS: tuple[str, ...] = ("fp32", "fp16", "int8")


class ManifestError(ValueError):
    """The folder holds no usable model: no manifest, a bad one, or a file whose checksum differs."""


class Preprocess(BaseModel):
    """Image preprocessing: resize, centre crop, scale to [0, 1], normalise per channel."""

    resize: int = Field(224, ge=1, description="Shortest side after resizing (resize_mode 'shortest_edge').")
    crop: int = Field(224, ge=1, description="Square centre crop size.")
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: Literal["shortest_edge", "exact"] = "shortest_edge"
    rescale_factor: float = 1 / 255


class TextConfig(BaseModel):
    """How texts become token ids for the text tower."""

    tokenizer: Literal["openai-clip-bpe"] = "openai-clip-bpe"
    context_length: int = Field(77, ge=2)
    vocab_size: int = 49408
    start_of_text: int = 49406
    end_of_text: int = 49407
    pad: int = 0
    lowercase: bool = True


class Parity(BaseModel):
    """Cosine similarity of ONNX Runtime vs torch outputs on fresh random inputs, measured at export."""

    image_min_cosine: float
    text_min_cosine: float | None = None
    threshold: float
    samples: int
    seed: int | None = None


class Manifest(BaseModel):
    """Contents of manifest.json."""

    format_version: int = FORMAT_VERSION
    model_id: str
    family: str = Field(description="'clip', 'efficientnet-lite0' or 'hf-vision'.")
    variant: Variant = "fp32"
    dim: int = Field(ge=1)
    opset: int
    has_text_tower: bool
    image_model: str = "image.onnx"
    text_model: str | None = None
    image_input: str = "pixel_values"
    text_input: str | None = None
    preprocess: Preprocess
    text: TextConfig | None = None
    files: dict[str, str] = Field(description="sha256 of each model file, by file name.")
    parity: Parity | None = None
    export_versions: dict[str, str] = {}
    source: dict[str, Any] = {}

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(model_dir: Path, *, verify: bool = True) -> Manifest:
    """Read manifest.json; with verify, check that every listed file exists with the recorded sha256."""
    path = Path(model_dir) / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist (export a model first)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is unreadable: {err}") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise ManifestError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {manifest.format_version}, expected {FORMAT_VERSION}")
    needed = [manifest.image_model] + ([manifest.text_model] if manifest.text_model else [])
    for name in needed:
        if name not in manifest.files:
            raise ManifestError(f"{path}: {name} has no checksum")
    if manifest.has_text_tower and (manifest.text_model is None or manifest.text is None):
        raise ManifestError(f"{path}: has_text_tower is set but no text model or text config is named")
    if verify:
        for name, expected in manifest.files.items():
            file = Path(model_dir) / name
            if not file.is_file():
                raise ManifestError(f"{file} is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise ManifestError(f"{file}: sha256 {actual[:12]}... differs from the manifest's {expected[:12]}...")
    return manifest
