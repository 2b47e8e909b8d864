"""Embedder settings: typed, documented, and a bad model folder named by its variable at start-up."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from services.embedder.core import EmbedderCore
from services.embedder.settings import EmbedderSettings
from tagalong.runtime.settings import SettingError, load_settings

ROOT = Path(__file__).resolve().parent.parent.parent


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAGALONG_EMBEDDER_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("TAGALONG_EMBEDDER_MAX_BATCH_SIZE", "48")
    monkeypatch.setenv("TAGALONG_EMBEDDER_ALLOWED_FORMATS", "jpeg, png")
    settings = load_settings(EmbedderSettings)
    assert settings.port == 50051
    assert settings.model_dir == tmp_path and settings.max_batch_size == 48
    assert settings.formats == ("JPEG", "PNG")
    assert settings.providers == "auto" and settings.queue_size >= settings.max_batch_size
    for name, field in EmbedderSettings.model_fields.items():
        if name in {"model_dir", "max_batch_size", "max_delay_ms", "queue_size", "providers", "intra_op_threads",
                    "preprocess_workers", "max_image_pixels"}:
            assert field.description, name


def test_missing_model_dir_names_the_variable(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TAGALONG_EMBEDDER_MODEL_DIR", raising=False)
    with pytest.raises(SystemExit) as info:
        load_settings(EmbedderSettings, program="tagalong-embedder")
    assert info.value.code == 2
    assert "TAGALONG_EMBEDDER_MODEL_DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "env_var", "problem"),
    [
        pytest.param({}, "TAGALONG_EMBEDDER_MODEL_DIR", "does not exist", id="empty-folder"),
        pytest.param({"providers": "NoSuchExecutionProvider"}, "TAGALONG_EMBEDDER_PROVIDERS", "not available",
                     id="unknown-provider"),
    ],
)
def test_bad_model_folder_or_provider_is_a_setting_error(
    tmp_path: Path, clip_model_dir: Path, overrides: dict[str, str], env_var: str, problem: str
) -> None:
    model_dir = tmp_path if not overrides else clip_model_dir
    core = EmbedderCore(EmbedderSettings(model_dir=model_dir, **overrides))  # type: ignore[arg-type]
    with pytest.raises(SettingError) as info:
        asyncio.run(core.start())
    assert info.value.env_var == env_var and problem in info.value.problem


def test_the_process_exits_with_one_line_for_a_bad_model_dir(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TAGALONG_EMBEDDER_MODEL_DIR": str(tmp_path),
           "TAGALONG_EMBEDDER_PORT": "0", "TAGALONG_LOG_FORMAT": "text"}
    proc = subprocess.run([sys.executable, "-m", "services.embedder"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tagalong-embedder: bad setting TAGALONG_EMBEDDER_MODEL_DIR:"), proc.stderr
