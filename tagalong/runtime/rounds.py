"""Checks of a RoundConfig that need no data: the gateway refuses a bad config when the round is started,
and the clusterer checks it again (it is also called directly)."""

from __future__ import annotations

from tagalong.runtime.errors import InvalidArgument
from tagalong.v1 import common_pb2

# Fractions and weights in [0, 1]; 0 means "the service default".
_UNIT_FIELDS = {
    "pca_variance": "",
    "confidence_threshold": "",
    "diversity": "",
    "feature_power": " (0: default; 1: off)",
}


def check_round_config(config: common_pb2.RoundConfig) -> None:
    """INVALID_ARGUMENT naming the first field out of its range."""
    for name, hint in _UNIT_FIELDS.items():
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise InvalidArgument(f"config.{name} must be in [0, 1]{hint}, got {value}")
