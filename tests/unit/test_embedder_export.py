"""The exporter: parity gate, manifest and checksums, int8, image-only HF models from a local folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from services.embedder import export
from services.embedder.engine import load_model
from services.embedder.manifest import Preprocess, load_manifest
from tagalong.runtime.errors import FailedPrecondition


def _tiny_source() -> export.Source:
    """A small convolutional image tower (exports in seconds)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 16),
    ).eval()
    return export.Source(name="tiny", model_id="tiny-conv", family="hf-vision", image=net,
                         preprocess=Preprocess(resize=40, crop=32))


def test_export_writes_a_verified_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "load_source", lambda name: _tiny_source())
    manifest = export.export_model("tiny", tmp_path / "tiny")
    again = load_manifest(tmp_path / "tiny", verify=True)
    assert again == manifest
    assert (manifest.dim, manifest.has_text_tower, manifest.family) == (16, False, "hf-vision")
    assert manifest.parity is not None and manifest.parity.image_min_cosine >= 0.9999
    assert set(manifest.files) == {"image.onnx", "preprocess.json"}
    assert sorted(os.listdir(tmp_path)) == ["tiny"]  # no temporary folder left behind
    model = load_model(tmp_path / "tiny")
    assert model.embed_pixels(np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 16)
    with pytest.raises(FailedPrecondition):
        model.embed_texts(["text"])


def test_export_refuses_a_model_below_the_parity_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "load_source", lambda name: _tiny_source())

    def damage(path: Path, variant: str) -> None:
        """A broken conversion: the first weight tensor is scrambled."""
        model = onnx.load(str(path))
        init = model.graph.initializer[0]
        arr = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.random.default_rng(0).permutation(arr.ravel()).reshape(arr.shape),
                                              init.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export, "_convert_variant", damage)
    with pytest.raises(export.ExportError, match=r"below 0\.9999; not written"):
        export.export_model("tiny", tmp_path / "tiny")
    assert os.listdir(tmp_path) == []


def test_unknown_model_and_variant_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(export.ExportError, match="variant"):
        export.export_model("random-clip", tmp_path / "x", variant="int4")
    with pytest.raises(export.ExportError, match="cannot load"):
        export.export_model(str(tmp_path / "no-such-model-folder"), tmp_path / "x")


def test_hf_vision_model_from_a_local_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16)
    import torch

    torch.manual_seed(0)
    src = tmp_path / "tiny-vit"
    ViTModel(config).eval().save_pretrained(src)
    ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(src)
    manifest = export.export_model(str(src), tmp_path / "out")
    assert manifest.family == "hf-vision" and not manifest.has_text_tower
    assert (manifest.preprocess.resize_mode, manifest.preprocess.crop) == ("exact", 64)
    assert manifest.dim == 32 and manifest.parity is not None and manifest.parity.image_min_cosine >= 0.9999


@pytest.mark.slow
def test_cli_exports_int8_random_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export.main(["random-clip", "--out", str(tmp_path / "int8"), "--variant", "int8"]) == 0
    out = capsys.readouterr().out
    assert "min cosine parity with torch: image" in out
    manifest = load_manifest(tmp_path / "int8")
    assert manifest.variant == "int8" and manifest.parity is not None
    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8" / "text.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    model = load_model(tmp_path / "int8")
    assert model.embed_texts(["a photo of a cat"]).shape == (1, 64)


@pytest.mark.slow
def test_hf_clip_from_a_local_folder_checks_its_tokenizer(tmp_path: Path) -> None:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from tests.unit.test_embedder_tokenizer import _reference_tokenizer

    src = tmp_path / "tiny-clip"
    export.random_clip(seed=3).save_pretrained(src)
    _reference_tokenizer().save_pretrained(src)
    CLIPImageProcessorPil().save_pretrained(src)
    manifest = export.export_model(str(src), tmp_path / "out")
    assert (manifest.family, manifest.has_text_tower, manifest.dim) == ("clip", True, 64)
    assert manifest.parity is not None and manifest.parity.text_min_cosine is not None
    assert manifest.parity.text_min_cosine >= 0.9999
    assert (manifest.preprocess.resize, manifest.preprocess.crop, manifest.preprocess.interpolation) == (
        224, 224, "bicubic")
