"""Clusterer settings and start-up checks: env prefix, RoundConfig defaults, clear failures for bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.clusterer.servicer import ClustererService, round_params
from services.clusterer.settings import ClustererSettings
from tagalong.devstack.milvus_server import free_port
from tagalong.runtime.errors import InvalidArgument
from tagalong.runtime.settings import SettingError, load_settings
from tagalong.v1 import common_pb2


def test_settings_read_their_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TAGALONG_CLUSTERER_LABELSTORE_ADDR", "store:1234")
    monkeypatch.setenv("TAGALONG_CLUSTERER_ARTIFACT_DIR", str(tmp_path))
    monkeypatch.setenv("TAGALONG_CLUSTERER_CONFIDENCE_THRESHOLD", "0.8")
    s = ClustererSettings()
    assert s.port == 50053 and s.labelstore_addr == "store:1234" and s.artifact_dir == tmp_path
    assert s.confidence_threshold == 0.8


def test_bad_setting_exits_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TAGALONG_CLUSTERER_CONFIDENCE_THRESHOLD", "1.5")
    with pytest.raises(SystemExit) as exit_info:
        load_settings(ClustererSettings, program="tagalong-clusterer")
    assert exit_info.value.code == 2
    assert "TAGALONG_CLUSTERER_CONFIDENCE_THRESHOLD" in capsys.readouterr().err


def test_round_config_zero_fields_take_service_defaults() -> None:
    settings = ClustererSettings(confidence_threshold=0.85, review_batch_size=30, max_iterations=4)
    p = round_params(common_pb2.RoundConfig(), settings)
    assert (p.confidence_threshold, p.review_batch_size, p.max_iterations, p.pca_variance) == (0.85, 30, 4, 0.95)
    assert p.label_spreading and p.self_training
    q = round_params(
        common_pb2.RoundConfig(
            confidence_threshold=0.7, k=12, pca_components=16, seed=5, disable_label_spreading=True, diversity=0.2
        ),
        settings,
    )
    assert (q.k, q.pca_components, q.seed) == (12, 16, 5)
    assert (q.confidence_threshold, q.diversity) == pytest.approx((0.7, 0.2))
    assert not q.label_spreading and q.self_training
    assert p.feature_power == 0.5 and q.feature_power == 0.5  # the service default
    assert round_params(common_pb2.RoundConfig(feature_power=1.0), settings).feature_power == 1.0
    assert round_params(common_pb2.RoundConfig(), ClustererSettings(feature_power=0.25)).feature_power == 0.25


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(common_pb2.RoundConfig(confidence_threshold=1.2), id="threshold"),
        pytest.param(common_pb2.RoundConfig(pca_variance=-0.1), id="variance"),
        pytest.param(common_pb2.RoundConfig(diversity=3), id="diversity"),
        pytest.param(common_pb2.RoundConfig(feature_power=1.5), id="power-above-1"),
        pytest.param(common_pb2.RoundConfig(feature_power=-0.5), id="negative-power"),
        pytest.param(common_pb2.RoundConfig(diversity=float("nan")), id="nan"),
    ],
)
def test_round_config_out_of_range(config: common_pb2.RoundConfig) -> None:
    with pytest.raises(InvalidArgument):
        round_params(config, ClustererSettings())


async def test_start_fails_clearly_when_the_label_store_is_unreachable(tmp_path: Path) -> None:
    settings = ClustererSettings(
        labelstore_addr=f"127.0.0.1:{free_port()}", artifact_dir=tmp_path, labelstore_connect_seconds=0.5
    )
    with pytest.raises(SettingError) as err:
        await ClustererService(settings).start()
    assert err.value.env_var == "TAGALONG_CLUSTERER_LABELSTORE_ADDR"


async def test_start_fails_clearly_when_artifacts_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    settings = ClustererSettings(artifact_dir=blocker / "sub", labelstore_connect_seconds=0.5)
    with pytest.raises(SettingError) as err:
        await ClustererService(settings).start()
    assert err.value.env_var == "TAGALONG_CLUSTERER_ARTIFACT_DIR"
