"""Hypothesis fuzzing of every public RPC (gateway, embedder, label store, clusterer) against real processes:
a caller's mistake gets a caller's code (never UNKNOWN/INTERNAL), nothing crashes or hangs, every service
is still SERVING afterwards and every job the fuzzing started ends. The 10,000-case run is the slow test at
the bottom and `python -m bench.bench_reliability`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.fixtures import reliability
from tests.fixtures.reliability import (
    FuzzContext,
    ProcStack,
    Tally,
    bomb_images,
    build_context,
    fuzz_images,
    fuzz_target,
    good_images,
    image_corpus,
    random_photos,
    rpc_targets,
    seed_dataset,
    stored_uris,
    wait_jobs_ended,
)

# The fixtures this module uses from the (unregistered) reliability plugin.
fuzz_dir = reliability.fuzz_dir
proc_stack = reliability.proc_stack

SERVICE_OF = {"tagalong.v1.Gateway": "gateway", "tagalong.v1.Embedder": "embedder",
              "tagalong.v1.LabelStore": "labelstore", "tagalong.v1.Clusterer": "clusterer"}
TARGETS = [t for name in SERVICE_OF for t in rpc_targets(name)]
FAST_EXAMPLES = 4  # x 40 RPCs: ~160 generated calls, plus ~300 image files
LONG_EXAMPLES = 265  # x 37 RPCs with fields + 3 without, + ~660 image cases: ~10,470 (about 12 minutes)


@dataclass
class Fuzzing:
    stack: ProcStack
    ctx: FuzzContext
    tally: Tally


@pytest.fixture(scope="module")
def fuzzing(proc_stack: ProcStack, fuzz_dir: Path) -> Iterator[Fuzzing]:
    """The stack with one worker and two seeded datasets (one with declared classes)."""
    proc_stack.start_workers(1)
    photos = random_photos(24, seed=1)
    jobs = [seed_dataset(proc_stack.address("gateway"), "fuzzds", photos[:16]),
            seed_dataset(proc_stack.address("gateway"), "fuzzcls", photos[16:], classes=("cat", "dog"))]
    ctx = build_context(proc_stack, fuzz_dir, photos, jobs, dim=64)
    yield Fuzzing(proc_stack, ctx, Tally())


@pytest.mark.parametrize("target", TARGETS, ids=[f"{SERVICE_OF[t.service]}.{t.method}" for t in TARGETS])
def test_fuzzed_requests_get_caller_codes(fuzzing: Fuzzing, target: object) -> None:
    tally = Tally()
    address = fuzzing.stack.address(SERVICE_OF[target.service])  # type: ignore[attr-defined]
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20)]) as channel:
        fuzz_target(channel, target, fuzzing.ctx, FAST_EXAMPLES, tally, seed=1)  # type: ignore[arg-type]
    fuzzing.tally.merge(tally)
    assert tally.cases >= 1
    assert not tally.findings, "\n".join(tally.findings[:10])
    assert all(fuzzing.stack.alive().values()), fuzzing.stack.all_logs()


@pytest.mark.parametrize("service", ["gateway", "embedder"])
def test_bad_image_files_get_item_errors(fuzzing: Fuzzing, service: str) -> None:
    """Truncated/corrupt/odd images and decompression bombs: per-item caller errors, never a crash."""
    tally = Tally()
    full = "tagalong.v1.Gateway" if service == "gateway" else "tagalong.v1.Embedder"
    corpus = image_corpus(seed=2)
    with grpc.insecure_channel(fuzzing.stack.address(service)) as channel:
        # One by one through the gateway; batched (each with a good image) and streamed to the embedder.
        fuzz_images(channel, corpus, tally, service=full,
                    modes=("single",) if service == "gateway" else ("batch", "stream"))
    fuzzing.tally.merge(tally)
    assert tally.cases >= (len(corpus) if service == "gateway" else 2)
    assert not tally.findings, "\n".join(tally.findings[:10])
    assert all(fuzzing.stack.alive().values()), fuzzing.stack.all_logs()


def test_everything_serving_and_no_job_stuck_after_fuzzing(fuzzing: Fuzzing) -> None:
    stack = fuzzing.stack
    assert all(stack.alive().values()), stack.all_logs()
    assert set(stack.health().values()) == {"SERVING"}, stack.health()
    stuck = wait_jobs_ended(stack.redis_url, stack.prefix, timeout=60)
    assert not stuck, f"jobs never ended: {stuck}\n{stack.log('worker-0')[-3000:]}"
    assert fuzzing.tally.cases >= 300
    # Path ingest under fuzzing: nothing from outside the allowed root (../, symlinks, /etc) was stored.
    outside = str(fuzzing.ctx.paths[0]).rsplit("/", 1)[0] + "/outside"
    for dataset in ("fuzzds", "fuzzcls"):
        leaked = [u for u in stored_uris(stack.address("gateway"), dataset)
                  if u.startswith(("/etc", "/proc", "/dev", outside))]
        assert not leaked, leaked


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ten_thousand_fuzzed_cases(fuzzing: Fuzzing) -> None:
    """The long run: 265 cases per RPC (the three with an empty request have one case each) plus the image
    corpus, >= 10,000 in all. The findings are checked first: they are what a failure must show."""
    tally = Tally()
    for target in TARGETS:
        with grpc.insecure_channel(fuzzing.stack.address(SERVICE_OF[target.service])) as channel:
            fuzz_target(channel, target, fuzzing.ctx, LONG_EXAMPLES, tally, seed=7)
    for service, full in (("gateway", "tagalong.v1.Gateway"), ("embedder", "tagalong.v1.Embedder")):
        with grpc.insecure_channel(fuzzing.stack.address(service)) as channel:
            fuzz_images(channel, image_corpus(seed=3), tally, service=full)
    assert not tally.findings, "\n".join(tally.findings[:20])
    assert tally.cases >= 10_000, (tally.cases, tally.codes, tally.per_rpc)
    assert set(fuzzing.stack.health().values()) == {"SERVING"}
    assert not wait_jobs_ended(fuzzing.stack.redis_url, fuzzing.stack.prefix, timeout=120)


def test_odd_but_valid_images_embed_and_bombs_are_refused(fuzzing: Fuzzing) -> None:
    """CMYK, 16-bit, alpha, palette, 1x1, animated, EXIF-rotated images give a finite unit vector; bombs and
    giant canvases get INVALID_ARGUMENT (or RESOURCE_EXHAUSTED) as their item error."""
    import numpy as np

    from tagalong.runtime.vectors import from_proto
    from tagalong.v1 import embedder_pb2, embedder_pb2_grpc

    good, bombs = good_images(), bomb_images()
    may_refuse = {"float.tiff", "i32.tiff"}  # 32-bit float/int TIFFs: refusing them cleanly is fine
    with grpc.insecure_channel(fuzzing.stack.address("embedder")) as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        reply = stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=list(good.values())), timeout=60)
        for name, result in zip(good, reply.results, strict=True):
            if result.WhichOneof("outcome") == "error":
                assert name in may_refuse and result.error.code == 3, (name, result.error)
                continue
            vec = from_proto(result.vector)
            assert vec.shape == (reply.dim,) and np.all(np.isfinite(vec)), name
            assert abs(float(np.linalg.norm(vec)) - 1) < 1e-3, name
        reply = stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=list(bombs.values())), timeout=60)
        for name, result in zip(bombs, reply.results, strict=True):
            assert result.WhichOneof("outcome") == "error", name
            assert result.error.code in (3, 8), (name, result.error)
