"""Near-duplicates on real CIFAR-10 photos with planted copies (re-encoded and resized), on both stores.

The feature is fixed and deterministic (an 8x8 RGB thumbnail, mean-centred and normalised) so that this
test does not depend on the embedder; precision and recall of the planted pairs are printed and floored.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from PIL import Image

from tagalong.runtime import vectors
from tagalong.runtime.ids import content_id, content_sha256
from tagalong.v1 import labelstore_pb2 as pb
from tests.fixtures.labelstore import LabelStoreHandle

THRESHOLD = 0.97  # distinct CIFAR photos stay below ~0.955 with this feature; copies are above 0.97
PER_CLASS = 50
T = 120


def thumbnail_feature(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((8, 8), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32).ravel()
    a -= a.mean()
    return a / (np.linalg.norm(a) + 1e-6)


def reencoded(data: bytes, quality: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def resized(data: bytes, size: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def planted_set(cifar: Path) -> tuple[list[tuple[str, bytes]], set[frozenset[int]]]:
    """(uri, bytes) of originals plus copies, and the planted duplicate pairs as id pairs."""
    files = [f for c in sorted(p for p in cifar.iterdir() if p.is_dir()) for f in sorted(c.glob("*.jpg"))[:PER_CLASS]]
    images = [(str(f.relative_to(cifar)), f.read_bytes()) for f in files]
    makers = [lambda d: reencoded(d, 40), lambda d: resized(d, 64), lambda d: resized(d, 20)]
    planted: set[frozenset[int]] = set()
    copies = []
    for k, (uri, data) in enumerate(images[::7]):  # every 7th photo gets one copy; every 21st gets two
        family = [data, makers[k % 3](data)]
        if k % 3 == 0:
            family.append(makers[1](data))
        for j, copy in enumerate(family[1:], start=1):
            copies.append((f"{uri}#copy{j}", copy))
        ids = [content_id(d) for d in family]
        planted.update(frozenset(p) for p in itertools.combinations(ids, 2))
    return images + copies, planted


async def test_planted_near_duplicates_are_found(labelstore: LabelStoreHandle, cifar_test_dir: Path) -> None:
    images, planted = planted_set(cifar_test_dir)
    await labelstore.stub.EnsureDataset(pb.EnsureDatasetRequest(name="cifar", dim=192, model_id="thumb8"), timeout=T)
    items = [pb.UpsertItem(content_sha256=content_sha256(d), uri=uri, vector=vectors.to_proto(thumbnail_feature(d)))
             for uri, d in images]
    originals = len(images) - sum(1 for uri, _ in images if "#copy" in uri)
    await labelstore.stub.Upsert(pb.UpsertRequest(dataset="cifar", items=items[:originals]), timeout=T)
    # Ingest-time check: each copy against what is stored before it (the originals).
    up = await labelstore.stub.Upsert(pb.UpsertRequest(
        dataset="cifar", items=items[originals:], check_duplicates=True, duplicate_threshold=THRESHOLD), timeout=T)
    flagged = {frozenset((d.id, d.duplicate_of)) for d in up.duplicates}
    copy_of_original = {p for p in planted if any(i in {content_id(d) for _, d in images[:originals]} for i in p)}
    assert len(flagged & copy_of_original) >= 0.95 * len(up.ids)

    reply = await labelstore.stub.NearDuplicates(
        pb.NearDuplicatesRequest(dataset="cifar", threshold=THRESHOLD, max_neighbors=10), timeout=T)
    found = {frozenset(p) for g in reply.groups for p in itertools.combinations(g.ids, 2)}
    hits = len(found & planted)
    precision = hits / max(len(found), 1)
    recall = hits / len(planted)
    print(f"\n[{labelstore.milvus_uri[:4]}] planted pairs {len(planted)}, found {len(found)}, "
          f"precision {precision:.3f}, recall {recall:.3f}")
    assert recall >= 0.95 and precision >= 0.9
    sizes = [len(g.ids) for g in reply.groups]
    assert sizes == sorted(sizes, reverse=True) and 3 in sizes
    for g in reply.groups:
        assert len(g.uris) == len(g.ids) and THRESHOLD <= g.min_similarity <= g.max_similarity <= 1.0
        assert "#copy" not in g.uris[0]  # the representative is the first stored: the original

    # Query mode: a fresh re-encode of a stored photo finds it.
    uri, data = images[3]
    probe = vectors.to_proto(thumbnail_feature(reencoded(data, 60)))
    per_query = await labelstore.stub.NearDuplicates(
        pb.NearDuplicatesRequest(dataset="cifar", threshold=THRESHOLD, vectors=[probe]), timeout=T)
    assert per_query.per_query[0].matches[0].id == content_id(data)
    assert per_query.per_query[0].matches[0].uri == uri


async def test_bad_thresholds_are_invalid_argument(labelstore: LabelStoreHandle) -> None:
    await labelstore.stub.EnsureDataset(pb.EnsureDatasetRequest(name="d", dim=4, model_id="m"), timeout=T)
    for threshold, neighbors in ((1.5, 0), (-3.0, 0), (0.9, 5000)):
        with pytest.raises(aio.AioRpcError) as err:
            await labelstore.stub.NearDuplicates(
                pb.NearDuplicatesRequest(dataset="d", threshold=threshold, max_neighbors=neighbors), timeout=T)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
