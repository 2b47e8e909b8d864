"""Allowed roots for path ingest: `..`, symlinks escaping a root and paths outside are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.paths import PermissionDenied, check_path, walk_images
from tagalong.runtime.errors import InvalidArgument, NotFound


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.jpg").write_bytes(b"a")
    (root / "sub" / "b.PNG").write_bytes(b"b")
    (root / "notes.txt").write_text("not an image")
    (outside / "secret.jpg").write_bytes(b"s")
    os.symlink(outside / "secret.jpg", root / "escape.jpg")
    os.symlink(outside, root / "escape_dir")
    os.symlink(root / "a.jpg", root / "sub" / "inside_link.jpg")
    return root, outside


@pytest.mark.parametrize(
    "relative",
    [
        pytest.param("../outside/secret.jpg", id="dot-dot"),
        pytest.param("sub/../../outside", id="dot-dot-dir"),
        pytest.param("escape.jpg", id="symlink-file-escaping"),
        pytest.param("escape_dir/secret.jpg", id="symlink-dir-escaping"),
    ],
)
def test_escapes_are_refused(tree: tuple[Path, Path], relative: str) -> None:
    root, _ = tree
    with pytest.raises(PermissionDenied, match="outside"):
        check_path(f"{root}/{relative}", [root])


@pytest.mark.parametrize(
    ("raw", "roots", "match"),
    [
        pytest.param("/etc/passwd", None, "outside", id="outside"),
        pytest.param("relative/a.jpg", None, "absolute", id="relative"),
        pytest.param("", None, "usable", id="empty"),
        pytest.param("/x", [], "no allowed roots", id="path-ingest-off"),
    ],
)
def test_refusals(tree: tuple[Path, Path], raw: str, roots: list[Path] | None, match: str) -> None:
    root, _ = tree
    with pytest.raises(PermissionDenied, match=match):
        check_path(raw, [root] if roots is None else roots)


def test_missing_file_under_a_root_is_not_found(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(NotFound):
        check_path(str(root / "missing.jpg"), [root])


def test_walk_lists_images_under_the_root_only(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    found = [p.relative_to(root).as_posix() for p in walk_images(str(root), [root])]
    # Text files and links escaping the root are left out; a link staying inside the root is kept.
    assert found == ["a.jpg", "sub/b.PNG", "sub/inside_link.jpg"]


def test_a_root_given_through_a_symlink_still_works(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tree
    os.symlink(root, tmp_path / "root_link")
    assert check_path(str(tmp_path / "root_link" / "a.jpg"), [tmp_path / "root_link"]) == root / "a.jpg"


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        pytest.param("a" * 300, InvalidArgument, "too long", id="name-over-255-bytes"),
        pytest.param("a.jpg/inner.jpg", NotFound, "a part of it is a file", id="file-as-directory"),
    ],
)
def test_paths_the_file_system_refuses_get_caller_errors(tree: tuple[Path, Path], name: str,
                                                         error: type[Exception], match: str) -> None:
    """Regression (fuzzing found it): a 300-byte file name made stat() raise OSError, which reached the
    caller as INTERNAL."""
    root, _ = tree
    with pytest.raises(error, match=match):
        check_path(f"{root}/{name}", [root])
    with pytest.raises(error, match=match):
        list(walk_images(f"{root}/{name}", [root]))
