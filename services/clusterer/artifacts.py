"""Fitted artifacts of a round (PCA basis, centroids, classifier, metadata) as npz/json files under its id.

Written to a temporary folder and renamed into place, so a replica reading a shared folder never sees half
a round. No pickle anywhere: everything loads with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.clusterer.classifier import LinearClassifier
from services.clusterer.pca import PCABasis
from tagalong.runtime.errors import InvalidArgument, NotFound

_ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_round_id(round_id: str) -> str:
    """A round id usable as a folder name (no separators, no '..'), else INVALID_ARGUMENT."""
    if not _ROUND_ID.match(round_id) or ".." in round_id:
        raise InvalidArgument(
            f"round_id {round_id!r} must be 1-128 characters of letters, digits, '_', '-', '.', starting with a letter"
            " or digit"
        )
    return round_id


@dataclass(frozen=True)
class RoundArtifacts:
    """What a later call needs to reuse a round's fit."""

    pca: PCABasis
    centroids: np.ndarray
    classifier: LinearClassifier | None
    class_names: list[str]
    meta: dict[str, Any]


def save_round(
    root: Path, round_id: str, *, pca: PCABasis, centroids: np.ndarray, classifier: LinearClassifier | None,
    class_names: list[str], meta: dict[str, Any],
) -> Path:
    """Write the round's artifacts to root/round_id (replacing an earlier save of the same id)."""
    check_round_id(round_id)
    root.mkdir(parents=True, exist_ok=True)
    final = root / round_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{round_id}.", dir=root))
    try:
        pca.save(tmp / "pca.npz")
        np.savez(tmp / "centroids.npz", centroids=centroids)
        if classifier is not None:
            classifier.save(tmp / "classifier.npz")
        (tmp / "round.json").write_text(json.dumps({**meta, "class_names": class_names}, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_round(root: Path, round_id: str) -> RoundArtifacts:
    """Read a saved round; NOT_FOUND when it was never saved."""
    folder = root / check_round_id(round_id)
    if not (folder / "round.json").exists():
        raise NotFound(f"no artifacts for round {round_id!r} under {root}")
    meta = json.loads((folder / "round.json").read_text())
    with np.load(folder / "centroids.npz", allow_pickle=False) as z:
        centroids = z["centroids"]
    clf_path = folder / "classifier.npz"
    classifier = LinearClassifier.load(clf_path) if clf_path.exists() else None
    return RoundArtifacts(
        pca=PCABasis.load(folder / "pca.npz"), centroids=centroids, classifier=classifier,
        class_names=list(meta.pop("class_names")), meta=meta,
    )


# ---- the dataset's PCA basis, kept between rounds ----------------------------------------------------------

# A saved basis is reused while the dataset has grown by less than this share since it was fitted.
PCA_REFIT_GROWTH = 0.25


def _dataset_folder(root: Path, dataset: str) -> Path:
    # A folder name from any dataset name: readable part plus a hash (no separators, no '..').
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", dataset)[:64]
    return root / "datasets" / f"{readable}-{hashlib.sha256(dataset.encode()).hexdigest()[:12]}"


def save_dataset_pca(root: Path, dataset: str, pca: PCABasis, *, rows: int, settings: dict[str, Any]) -> None:
    """Keep `pca` as the dataset's basis (atomically: written beside, then renamed)."""
    folder = _dataset_folder(root, dataset)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pca.", suffix=".npz", dir=folder)
    os.close(fd)
    try:
        pca.save(Path(tmp))
        os.replace(tmp, folder / "pca.npz")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {"rows": rows, "dim": int(pca.mean.shape[0]), "settings": settings}
    (folder / "pca.json.tmp").write_text(json.dumps(meta, sort_keys=True))
    os.replace(folder / "pca.json.tmp", folder / "pca.json")


def load_dataset_pca(root: Path, dataset: str, *, rows: int, dim: int, settings: dict[str, Any]) -> PCABasis | None:
    """The dataset's saved basis when it still applies: same settings and dimension, and the dataset grew by
    less than PCA_REFIT_GROWTH (or shrank by less) since the fit. None otherwise (then the round refits)."""
    folder = _dataset_folder(root, dataset)
    try:
        meta = json.loads((folder / "pca.json").read_text())
        if meta.get("dim") != dim or meta.get("settings") != settings:
            return None
        fitted_rows = int(meta["rows"])
        if not fitted_rows or abs(rows - fitted_rows) > PCA_REFIT_GROWTH * fitted_rows:
            return None
        return PCABasis.load(folder / "pca.npz")
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return None
