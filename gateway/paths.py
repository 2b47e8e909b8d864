"""Allowed-roots checks for path ingest: a path is read only when its real location lies under a root."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from tagalong.runtime.errors import InvalidArgument, NotFound, ServiceError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


class PermissionDenied(ServiceError):
    """A path outside the allowed roots (the runtime maps ServiceError.code to the status)."""

    code = grpc.StatusCode.PERMISSION_DENIED


def _real_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(os.path.realpath(r)) for r in roots]


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def check_path(raw: str, roots: Sequence[Path]) -> Path:
    """The real path of `raw` when it lies under an allowed root; PERMISSION_DENIED or NOT_FOUND otherwise.

    The check runs on the fully resolved path (symlinks followed, `..` collapsed), so neither `../`
    nor a symlink pointing out of a root gets past it.
    """
    if not roots:
        raise PermissionDenied("path ingest is off: the gateway has no allowed roots (TAGALONG_GATEWAY_ALLOWED_ROOTS)")
    if not raw or "\x00" in raw:
        raise PermissionDenied(f"path {raw!r} is not a usable path")
    candidate = Path(raw)
    if not candidate.is_absolute():
        raise PermissionDenied(f"path {raw!r} must be absolute")
    real = Path(os.path.realpath(candidate))
    if not _under(real, _real_roots(roots)):
        raise PermissionDenied(f"path {raw!r} is outside the gateway's allowed roots")
    try:
        real.stat()
    # A caller's path the file system refuses to look up is the caller's error, never an internal one.
    except FileNotFoundError:
        raise NotFound(f"path {raw!r} does not exist") from None
    except NotADirectoryError:
        raise NotFound(f"path {raw!r} does not exist (a part of it is a file)") from None
    except PermissionError:
        raise PermissionDenied(f"path {raw!r} cannot be read by the gateway") from None
    except OSError as err:
        reason = "a name in it is too long" if err.errno == errno.ENAMETOOLONG else (err.strerror or str(err))
        raise InvalidArgument(f"path {raw!r} is not usable: {reason}") from None
    return real


def walk_images(raw: str, roots: Sequence[Path]) -> Iterator[Path]:
    """The image files at `raw` (a file, or a directory walked in sorted order), each checked against the roots.

    Entries of a directory that resolve outside the roots (symlinks escaping them) are skipped, not followed.
    """
    top = check_path(raw, roots)
    if top.is_file():
        yield top
        return
    real_roots = _real_roots(roots)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            real = Path(os.path.realpath(path))
            try:
                usable = real.is_file()
            except OSError:  # e.g. a resolved path over PATH_MAX: skipped like an escaping symlink
                continue
            if usable and _under(real, real_roots):
                yield path
