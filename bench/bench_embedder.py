"""Embedder benchmark: torch eager vs ONNX Runtime fp32 vs int8 at batch 32, and images/s served over gRPC
at 1, 8, 32 and 64 concurrent single-image callers, each as a ratio to offline ORT batch-32 throughput.

    python -m bench.bench_embedder [--quick] [--models efficientnet-lite0 random-clip-b32] [--seconds S]

Writes bench/results/embedder.md. Models are exported (and cached) under var/models/ on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import header, table, write
from services.embedder import offline
from services.embedder.engine import load_model
from services.embedder.export import ensure_model, load_source
from services.embedder.preprocess import DecodeLimits

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "var" / "models"
CIFAR = Path(os.environ.get("TAGALONG_DATASETS_DIR", ROOT.parent / "shared" / "datasets")) / "cifar10-test-jpg.tar.gz"
BATCH = 32
CALLERS = (1, 8, 32, 64)


def cifar_jpegs(n: int) -> list[bytes]:
    """The first n CIFAR-10 test JPEGs (32x32 real photos), read straight from the archive."""
    out: list[bytes] = []
    with tarfile.open(CIFAR) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                fh = tar.extractfile(member)
                if fh is not None:
                    out.append(fh.read())
                if len(out) >= n:
                    break
    return out


def throughput(fn: Callable[[], object], items: int, seconds: float) -> float:
    """Items per second of fn (warmed up once), run for about `seconds`."""
    fn()
    runs = 0
    started = time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return runs * items / elapsed


def offline_numbers(
    name: str, images: list[bytes], seconds: float, repeats: int
) -> tuple[dict[str, float], Callable[[], float]]:
    """torch eager, ORT fp32 and ORT int8 at batch 32 on the same preprocessed real images (best of repeats,
    measured in turn so that a burst of load from elsewhere does not hit one variant only)."""
    import torch

    fp32_dir = ensure_model(name, MODELS / name)
    int8_dir = ensure_model(name, MODELS / f"{name}-int8", variant="int8")
    fp32 = load_model(fp32_dir)
    int8 = load_model(int8_dir)
    pixels = np.stack([fp32.preprocessor(raw, DecodeLimits()) for raw in images[:BATCH]])
    tower = load_source(name).image
    torch.set_num_threads(os.cpu_count() or 1)
    tensor = torch.from_numpy(pixels)

    def torch_run() -> object:
        with torch.inference_mode():
            return tower(tensor)

    sample = images[: 4 * BATCH]
    runs: dict[str, tuple[Callable[[], object], int]] = {
        "torch": (torch_run, BATCH),
        "ort_fp32": (lambda: fp32.embed_pixels(pixels), BATCH),
        "ort_int8": (lambda: int8.embed_pixels(pixels), BATCH),
        "e2e": (lambda: offline.embed_images(fp32_dir, sample, batch_size=BATCH), len(sample)),
    }
    numbers = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for key, (fn, items) in runs.items():
            numbers[key] = max(numbers[key], throughput(fn, items, seconds))
    a, b = fp32.embed_pixels(pixels), int8.embed_pixels(pixels)
    numbers["int8_min_cos"] = float(np.min(np.sum(a * b, axis=1)))
    # Offline ORT fp32 batch 32 again, for ratios measured back to back with each served run.
    return numbers, lambda: throughput(lambda: fp32.embed_pixels(pixels), BATCH, seconds)


async def _callers(address: str, images: list[bytes], callers: int, seconds: float) -> float:
    from grpc import aio

    from tagalong.v1 import embedder_pb2, embedder_pb2_grpc

    done = 0
    failures = 0
    async with aio.insecure_channel(address) as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        for i in range(4):  # warm the connection and the batcher
            await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=[images[i]]), timeout=30)
        stop_at = time.perf_counter() + seconds

        async def caller(k: int) -> None:
            nonlocal done, failures
            i = k
            while time.perf_counter() < stop_at:
                reply = await stub.EmbedImages(
                    embedder_pb2.EmbedImagesRequest(images=[images[i % len(images)]]), timeout=60
                )
                if reply.results[0].WhichOneof("outcome") == "vector":
                    done += 1
                else:
                    failures += 1
                i += callers

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} images failed to embed")
    return done / elapsed


def served_numbers(
    name: str, images: list[bytes], seconds: float, repeats: int, baseline: Callable[[], float]
) -> tuple[dict[int, float], dict[int, float]]:
    """Images/s through a real embedder process at each number of concurrent single-image callers (best of
    repeats), and the median ratio to offline ORT batch 32 measured right before each served run (the
    machine's load changes by the minute; back-to-back pairs see about the same load)."""
    from tagalong.devstack.__main__ import wait_serving
    from tagalong.devstack.milvus_server import free_port

    port = free_port()
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "TAGALONG_EMBEDDER_MODEL_DIR": str(MODELS / name),
        "TAGALONG_EMBEDDER_PORT": str(port), "TAGALONG_EMBEDDER_MAX_BATCH_SIZE": str(BATCH),
        "TAGALONG_LOG_FORMAT": "text", "TAGALONG_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "services.embedder"], env=env, cwd=ROOT)
    try:
        if not wait_serving(f"127.0.0.1:{port}", timeout=180, proc=proc):
            raise RuntimeError("the embedder did not start")
        best = dict.fromkeys(CALLERS, 0.0)
        ratios: dict[int, list[float]] = {c: [] for c in CALLERS}
        for _ in range(repeats):
            for c in CALLERS:
                offline_ips = baseline()
                ips = asyncio.run(_callers(f"127.0.0.1:{port}", images, c, seconds))
                best[c] = max(best[c], ips)
                ratios[c].append(ips / offline_ips)
        return best, {c: float(np.median(r)) for c, r in ratios.items()}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(models: list[str], seconds: float, repeats: int) -> str:
    images = cifar_jpegs(512)
    load_before = os.getloadavg()[0]
    text = header("Embedder: torch vs ONNX Runtime, and served throughput")
    body = ""
    for name in models:
        print(f"== {name}: offline", flush=True)
        off, baseline = offline_numbers(name, images, seconds, repeats)
        print(f"== {name}: served", flush=True)
        served, paired = served_numbers(name, images, seconds, repeats, baseline)
        base = off["ort_fp32"]
        rows: list[list[object]] = [
            ["torch eager fp32, batch 32 (inference only)", off["torch"], off["torch"] / base, "-"],
            ["ORT fp32, batch 32 (inference only)", base, 1.0, "-"],
            ["ORT int8 dynamic, batch 32 (inference only)", off["ort_int8"], off["ort_int8"] / base, "-"],
            ["offline embed_images fp32 (decode + preprocess + infer)", off["e2e"], off["e2e"] / base, "-"],
        ]
        rows += [[f"served gRPC, {c} concurrent single-image callers", ips, ips / base, paired[c]]
                 for c, ips in served.items()]
        body += f"## {name}\n\n" + table(
            ["what", "images/s (best)", "ratio to ORT fp32 batch 32 (best)", "paired ratio (median)"], rows
        )
        speedup = base / off["torch"]
        at32 = paired[32]
        body += (
            f"\n- ORT fp32 vs torch eager: {speedup:.2f}x (target >= 1.5x: {'met' if speedup >= 1.5 else 'NOT met'}).\n"
            f"- Served at 32 callers, paired with offline ORT batch-32 measured just before: {at32:.0%} "
            f"(target >= 90%: {'met' if at32 >= 0.9 else 'NOT met'}); best served vs best offline decode+infer: "
            f"{served[32] / off['e2e']:.0%}.\n"
            f"- int8 vs fp32 cosine on these images: min {off['int8_min_cos']:.4f}.\n\n"
        )
    text += (
        f"Inputs: CIFAR-10 test JPEGs (32x32, upscaled by the model's preprocessing). Batch {BATCH}. Each figure "
        f"is the best of {repeats} runs of ~{seconds:g}s (images/s); variants are measured in turn. Served: a "
        "separate `python -m services.embedder` process (max batch 32, max delay 5 ms, default threads), callers "
        "in this process over loopback gRPC, one image per call. CPU only: no GPU is lent to this task, so fp16 "
        "and the TensorRT/CUDA providers were not measured. The 2-CPU machine is shared with other work (load "
        f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after): expect noise between runs.\n\n"
    )
    return text + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="EfficientNet-Lite0 only, short runs (< 3 minutes)")
    parser.add_argument("--models", nargs="*", help="models to measure (default: efficientnet-lite0 random-clip-b32)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement")
    args = parser.parse_args()
    models = args.models or (["efficientnet-lite0"] if args.quick else ["efficientnet-lite0", "random-clip-b32"])
    seconds = args.seconds or (1.5 if args.quick else 4.0)
    write("embedder", report(models, seconds, repeats=1 if args.quick else 3))


if __name__ == "__main__":
    main()
