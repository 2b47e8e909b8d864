"""Ingest through the whole stack vs the bare embedder, on the same CIFAR-10 JPEGs in the same run.

Bare: EmbedImages batches sent straight to the embedder service (`--bare-concurrency` calls in flight).
Stack: the SDK streams the same bytes to the gateway; workers take them from Redis Streams, call the
embedder, upsert into the label store (Milvus) and count them; timed until the job reports done.
Every component runs as its own process, as `make up` runs them. Target: stack >= 80 % of bare.

`python -m bench.bench_gateway [--quick]` writes bench/results/gateway.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import redis as redis_sync

from bench.common import header, table, write
from tagalong.devstack import milvus_server, redis_server
from tagalong.devstack.__main__ import wait_serving
from tagalong.runtime.channels import make_channel
from tagalong.sdk import Client
from tagalong.v1 import embedder_pb2, embedder_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
ARCHIVE = Path(os.environ.get("TAGALONG_DATASETS_DIR", ROOT.parent / "shared" / "datasets")) / "cifar10-test-jpg.tar.gz"


def cifar_images(n: int) -> list[tuple[str, bytes]]:
    """The first n CIFAR-10 test JPEGs, classes interleaved (unpacked once under var/cache)."""
    out = VAR / "cache" / "cifar10-test"
    if not (out / ".done").exists():
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(out, filter="data")
        (out / ".done").touch()
    files = sorted(out.rglob("*.jpg"), key=lambda p: (p.stem, p.parent.name))[:n]
    return [(str(p), p.read_bytes()) for p in files]


class Procs:
    """Subprocesses of this run, stopped in reverse order at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append((name, proc))
        return proc

    def serve(self, name: str, module: str, env: dict[str, str], address: str) -> None:
        proc = self.start(name, module, env)
        if not wait_serving(address, timeout=300, proc=proc):
            raise RuntimeError(f"{name} did not start; see {self.log_dir / (name + '.log')}")

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def bare_throughput(address: str, images: list[bytes], batch: int, concurrency: int) -> float:
    """Images per second embedding straight through the embedder service."""
    async with make_channel(address) as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=images[:batch]), timeout=120)  # warm
        batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        gate = asyncio.Semaphore(concurrency)

        async def one(chunk: list[bytes]) -> int:
            async with gate:
                reply = await stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=chunk, float16=True),
                                               timeout=600)
                return sum(r.WhichOneof("outcome") == "vector" for r in reply.results)

        started = time.perf_counter()
        ok = sum(await asyncio.gather(*(one(b) for b in batches)))
        elapsed = time.perf_counter() - started
    if ok != len(images):
        raise RuntimeError(f"bare embedder embedded {ok} of {len(images)} images")
    return len(images) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2k images instead of 10k")
    parser.add_argument("--n", type=int, default=0, help="images (default 10000, 2000 with --quick)")
    parser.add_argument("--model-dir", type=Path, default=VAR / "models" / "efficientnet-lite0")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--milvus", choices=["server", "lite"], default="server",
                        help="start a Milvus standalone server (falls back to Lite when it fails to start) or use Lite")
    parser.add_argument("--milvus-uri", default=os.environ.get("TAGALONG_MILVUS_URI", ""),
                        help="use this running Milvus instead of starting one")
    parser.add_argument("--batch", type=int, default=32, help="images per EmbedImages call (bare and workers)")
    parser.add_argument("--bare-concurrency", type=int, default=8,
                        help="EmbedImages calls in flight (8: as many as 2 workers keep in flight)")
    args = parser.parse_args(argv)
    n = args.n or (2000 if args.quick else 10_000)

    if not (args.model_dir / "manifest.json").exists():
        from services.embedder.export import ensure_model

        ensure_model("efficientnet-lite0", args.model_dir)
    images = cifar_images(n)
    run_dir = VAR / "bench" / f"gateway-{uuid.uuid4().hex[:6]}"
    procs = Procs(run_dir / "logs")
    redis_url = os.environ.get("TAGALONG_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_pid = None
    if not redis_server.reachable(redis_url):
        port = milvus_server.free_port()
        redis_pid = redis_server.start_private(run_dir / "redis", port)
        redis_url = f"redis://127.0.0.1:{port}/0"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    milvus = None
    ports = {name: milvus_server.free_port() for name in ("gateway", "embedder", "labelstore")}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    env = dict(os.environ)
    env.update({
        "TAGALONG_LOG_FORMAT": "text", "TAGALONG_REDIS_URL": redis_url, "TAGALONG_REDIS_PREFIX": prefix,
        "TAGALONG_EMBEDDER_MODEL_DIR": str(args.model_dir), "TAGALONG_EMBEDDER_PORT": str(ports["embedder"]),
        "TAGALONG_LABELSTORE_PORT": str(ports["labelstore"]), "TAGALONG_GATEWAY_PORT": str(ports["gateway"]),
        "TAGALONG_GATEWAY_EMBEDDER_ADDR": addr["embedder"], "TAGALONG_GATEWAY_LABELSTORE_ADDR": addr["labelstore"],
        "TAGALONG_GATEWAY_CLUSTERER_ADDR": "127.0.0.1:9",  # no rounds in this benchmark
        "TAGALONG_GATEWAY_EMBED_BATCH_SIZE": str(args.batch), "TAGALONG_GATEWAY_MAX_QUEUE_LENGTH": str(n + 100),
    })
    rows: list[list[object]] = []
    try:
        procs.serve("embedder", "services.embedder", env, addr["embedder"])
        bare = asyncio.run(bare_throughput(addr["embedder"], [b for _, b in images], args.batch,
                                           args.bare_concurrency))
        print(f"bare embedder: {bare:.1f} images/s")
        milvus_uri, milvus_kind = "", args.milvus
        if args.milvus_uri:
            milvus_uri, milvus_kind = args.milvus_uri, "given"
        elif args.milvus == "server":
            try:
                milvus = milvus_server.start(run_dir / "milvus")
                milvus_uri = milvus.uri
            except RuntimeError as err:
                print(f"milvus server failed to start ({err}); using Milvus Lite", file=sys.stderr)
                milvus_kind = "lite (the server failed to start)"
        env["TAGALONG_LABELSTORE_MILVUS_URI"] = milvus_uri or str(run_dir / "lite.db")
        procs.serve("labelstore", "services.labelstore", env, addr["labelstore"])
        procs.serve("gateway", "gateway", env, addr["gateway"])
        for i in range(args.workers):
            procs.start(f"worker-{i}", "gateway.worker", env)
        with Client(addr["gateway"]) as client:
            client.create_dataset("bench")
            warm = client.ingest("bench", [b for _, b in images[:64]])  # warms workers, channels and Milvus
            client.wait(warm.job_id, timeout=300)
            started = time.perf_counter()
            reply = client.ingest("bench", [(b, "") for _, b in images], timeout=3600)
            uploaded = time.perf_counter() - started
            job = client.wait(reply.job_id, timeout=3600)
            elapsed = time.perf_counter() - started
            count = next(d.count for d in client.list_datasets() if d.name == "bench")
        if job.failed or job.done != n or count != len({b for _, b in images}):
            raise RuntimeError(f"ingest incomplete: {job}; stored {count}")
        stack = n / elapsed
        print(f"gateway + redis + embedder + labelstore: {stack:.1f} images/s ({stack / bare:.0%} of bare)")
        rows = [
            ["bare embedder (EmbedImages, gRPC)", n, f"{n / bare:.1f}", f"{bare:.1f}", "100%"],
            [f"gateway ingest ({args.workers} workers, Milvus {milvus_kind})", n, f"{elapsed:.1f}", f"{stack:.1f}",
             f"{stack / bare:.0%}"],
        ]
        verdict = "meets" if stack >= 0.8 * bare else "misses"
        text = header("Gateway ingest vs the bare embedder") + (
            f"- images: {n} CIFAR-10 test JPEGs (32x32), model `{args.model_dir.name}`, batch {args.batch}, "
            f"bare concurrency {args.bare_concurrency}\n"
            f"- command: `python -m bench.bench_gateway{' --quick' if args.quick else ''}`\n"
            f"- upload (client -> gateway -> Redis) finished after {uploaded:.1f}s; stored rows: {count}\n"
            f"- load average at the end (1/5/15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
            "(the machine is shared: the ratio is measured back to back in one run)\n\n"
            + table(["path", "images", "seconds", "images/s", "vs bare"], rows)
            + f"\nThe stack reaches {stack / bare:.0%} of bare embedder throughput: it {verdict} the 80 % target.\n"
        )
        write("gateway", text)
    finally:
        procs.stop()
        if milvus is not None:
            milvus_server.stop(milvus)
        # Keep the logs of the run, not its data.
        shutil.rmtree(run_dir / "milvus", ignore_errors=True)
        lite = run_dir / "lite.db"
        if lite.is_dir():
            shutil.rmtree(lite, ignore_errors=True)
        elif lite.exists():
            lite.unlink()
        with contextlib.suppress(Exception):
            client_r = redis_sync.Redis.from_url(redis_url)
            for key in client_r.scan_iter(match=f"{prefix}:*"):
                client_r.delete(key)
        if redis_pid is not None:
            milvus_server.stop_pid(redis_pid, term_wait=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
