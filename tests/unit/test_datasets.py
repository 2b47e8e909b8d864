"""The offline labelled collections used by the demo and the benchmarks."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tagalong.datasets import FASHION_CLASSES, cifar10, fashion_mnist, fashion_mnist_arrays, folder_per_class
from tagalong.devstack import debian
from tests.conftest import DATASETS


def test_fashion_mnist_is_balanced_decodable_pngs() -> None:
    items = fashion_mnist(per_class=3)
    assert Counter(i.label for i in items) == dict.fromkeys(FASHION_CLASSES, 3)
    img = Image.open(io.BytesIO(items[0].data))
    assert img.format == "PNG" and img.size == (28, 28)
    assert len({i.data for i in items}) == len(items)


def test_fashion_mnist_elsewhere_is_never_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(debian, "apt_install", lambda package, why: calls.append(package))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_arrays("test", root=tmp_path)
    assert calls == []  # only Debian's own folder is installed on demand


def test_missing_fashion_mnist_is_installed_from_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh machine: the default folder is empty until the Debian package is installed.
    import tagalong.datasets as datasets

    calls: list[str] = []
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "fashion-mnist")
    monkeypatch.setattr(debian, "apt_install", lambda package, why: calls.append(package))
    with pytest.raises(FileNotFoundError):
        datasets.fashion_mnist_arrays("test")
    assert calls == ["dataset-fashion-mnist"]


def test_apt_install_without_root_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match=r"apt-get install -y dataset-fashion-mnist"):
        debian.apt_install("dataset-fashion-mnist", "missing")


def test_cifar10_reads_the_shared_archive() -> None:
    items = cifar10(DATASETS / "cifar10-test-jpg.tar.gz", per_class=2)
    assert len({i.label for i in items}) == 10
    assert all(Image.open(io.BytesIO(i.data)).size == (32, 32) for i in items)


def test_folder_per_class(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for k in range(3):
            Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(tmp_path / label / f"{k}.png")
    (tmp_path / "notes.txt").write_text("not a class")
    items = folder_per_class(tmp_path, per_class=2)
    assert Counter(i.label for i in items) == {"cat": 2, "dog": 2}
    with pytest.raises(FileNotFoundError):
        folder_per_class(tmp_path / "cat" / "0.png")
