"""Exported models: ONNX Runtime vs torch parity, manifests and checksums, offline embedding, a real photo."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from services.embedder import offline
from services.embedder.engine import choose_providers, load_model
from services.embedder.export import ensure_model, random_clip
from services.embedder.manifest import ManifestError, load_manifest
from services.embedder.preprocess import DecodeLimits
from services.embedder.tokenizer import ClipTokenizer
from tagalong.runtime.errors import FailedPrecondition, InvalidArgument
from tests.fixtures.embedder import encode_image


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def test_random_clip_onnx_matches_torch_on_fresh_inputs(clip_model_dir: Path, sample_images: list[bytes]) -> None:
    import torch

    model = load_model(clip_model_dir)
    clip = random_clip()  # the same seeded weights the export used, through HF's own forward
    rng = np.random.default_rng(2024)
    noise = rng.standard_normal((5, 3, 224, 224)).astype(np.float32)
    photos = np.stack([model.preprocessor(raw, DecodeLimits()) for raw in sample_images])
    pixels = np.concatenate([noise, photos])
    texts = ["a photo of a cat", "a photo of a dog", "an airplane", "", "a truck " * 40]
    ids = ClipTokenizer()(texts)
    with torch.no_grad():
        out = clip(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels))
    image_cos = _cosines(out.image_embeds.numpy(), model.embed_pixels(pixels))
    text_cos = _cosines(out.text_embeds.numpy(), model.embed_texts(texts))
    assert image_cos.min() >= 0.9999, image_cos
    assert text_cos.min() >= 0.9999, text_cos
    # Outputs are unit vectors, float32, one per input.
    vectors = model.embed_pixels(pixels)
    assert vectors.dtype == np.float32 and vectors.shape == (len(pixels), model.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_manifest_describes_the_export(clip_model_dir: Path, effnet_model_dir: Path) -> None:
    clip = load_manifest(clip_model_dir)
    assert (clip.family, clip.dim, clip.has_text_tower, clip.variant) == ("clip", 64, True, "fp32")
    assert set(clip.files) == {"image.onnx", "text.onnx", "tokenizer.json", "preprocess.json"}
    assert clip.parity is not None and clip.parity.image_min_cosine >= 0.9999
    assert clip.parity.text_min_cosine is not None and clip.parity.text_min_cosine >= 0.9999
    assert {"torch", "onnx", "onnxruntime"} <= set(clip.export_versions)
    eff = load_manifest(effnet_model_dir)
    assert (eff.family, eff.dim, eff.has_text_tower, eff.text_model) == ("efficientnet-lite0", 1280, False, None)
    assert (eff.preprocess.resize, eff.preprocess.crop) == (256, 224)
    assert eff.parity is not None and eff.parity.image_min_cosine >= 0.9999


def test_tampered_or_missing_files_are_refused(clip_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(clip_model_dir, copy)
    load_manifest(copy)  # intact copy is fine
    with (copy / "text.onnx").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(copy)
    (copy / "text.onnx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        load_manifest(copy)
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nowhere")


def test_ensure_model_reuses_a_valid_export(clip_model_dir: Path) -> None:
    before = (clip_model_dir / "manifest.json").stat().st_mtime_ns
    assert ensure_model("random-clip", clip_model_dir) == clip_model_dir
    assert (clip_model_dir / "manifest.json").stat().st_mtime_ns == before


def test_image_only_model_refuses_texts(effnet_model_dir: Path) -> None:
    model = load_model(effnet_model_dir)
    assert not model.has_text_tower
    with pytest.raises(FailedPrecondition, match="no text tower"):
        model.embed_texts(["a cat"])
    with pytest.raises(FailedPrecondition):
        offline.embed_texts(effnet_model_dir, ["a cat"])


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_real_photo_crops_are_closer_to_each_other_than_to_another_photo(effnet_model_dir: Path) -> None:
    cat = Image.fromarray(data.chelsea())  # 451 x 300
    left, right = cat.crop((0, 0, 330, 300)), cat.crop((121, 0, 451, 300))
    others = [data.coffee(), data.astronaut(), data.rocket()]
    images = [_jpeg(left), _jpeg(right)] + [_jpeg(Image.fromarray(o)) for o in others]
    vectors = offline.embed_images(effnet_model_dir, images)
    assert vectors.shape == (5, 1280)
    sims = vectors @ vectors.T
    same = sims[0, 1]
    for j in range(2, 5):
        assert same > sims[0, j] and same > sims[1, j], (same, sims[:2, 2:])


def test_offline_embeds_files_in_order_and_names_a_bad_image(clip_model_dir: Path, tmp_path: Path) -> None:
    paths = []
    for i, arr in enumerate((data.astronaut(), data.coffee(), data.chelsea())):
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode_image(arr))
        paths.append(path)
    vectors = offline.embed_image_files(clip_model_dir, paths, batch_size=2)
    single = np.stack([offline.embed_images(clip_model_dir, [p.read_bytes()])[0] for p in paths])
    np.testing.assert_allclose(vectors, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(InvalidArgument, match=r"images\[1\]"):
        offline.embed_images(clip_model_dir, [paths[0].read_bytes(), b"not an image"])
    assert offline.embed_images(clip_model_dir, []).shape == (0, 64)


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        pytest.param("auto", ["CPUExecutionProvider"], ["CPUExecutionProvider"], id="auto-cpu"),
        pytest.param("auto", ["CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"],
                     ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], id="auto-gpu"),
        pytest.param("CUDAExecutionProvider", ["CUDAExecutionProvider", "CPUExecutionProvider"],
                     ["CUDAExecutionProvider", "CPUExecutionProvider"], id="named-gets-cpu-fallback"),
    ],
)
def test_provider_choice(requested: str, available: list[str], expected: list[str]) -> None:
    assert choose_providers(requested, available) == expected


def test_unavailable_provider_is_an_error() -> None:
    with pytest.raises(ValueError, match="not available"):
        choose_providers("CUDAExecutionProvider", ["CPUExecutionProvider"])


def test_tokenizer_file_records_the_text_config(clip_model_dir: Path) -> None:
    info = json.loads((clip_model_dir / "tokenizer.json").read_text())
    assert info["context_length"] == 77 and info["end_of_text"] == 49407 and info["pad"] == 0
