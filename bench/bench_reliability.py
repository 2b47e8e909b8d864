"""`python -m bench.bench_reliability [--quick]`: tagalong under bad input, faults, load and attack, with real
processes, Redis and a Milvus server; writes bench/results/reliability.md.

1. fuzzing of every public RPC (hypothesis) plus the bad-image corpus: codes, crashes, health after;
2. ingest of CIFAR-10 test photos (10k; --quick 1k) under kill -9 of a worker, the embedder and the label
   store and restarts of Redis (AOF) and Milvus: rows, duplicates, job state;
3. 64 concurrent callers for 60 s (--quick 15 s) on the gateway, then SIGTERM under that load;
4. security: token auth on every RPC of every service, message size limits, the token in the logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc

from bench.common import header, table, write
from tests.fixtures import reliability as rel

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "var" / "models" / "random-clip"
CIFAR_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-test-jpg.tar.gz"
SERVICE_OF = {"tagalong.v1.Gateway": "gateway", "tagalong.v1.Embedder": "embedder",
              "tagalong.v1.LabelStore": "labelstore", "tagalong.v1.Clusterer": "clusterer"}


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_model() -> Path:
    from services.embedder.export import ensure_model as export

    return Path(export("random-clip", MODEL))


def cifar_dir() -> Path:
    out = ROOT / "var" / "bench_reliability" / "cifar"
    if not (out / "test").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(CIFAR_TAR) as tar:
            tar.extractall(out, filter="data")
    return next(p for p in out.rglob("test") if p.is_dir())


# ---- 1. fuzzing ----------------------------------------------------------------------------------------------


def fuzz_section(base: Path, stores: rel.PrivateStores, model: Path, per_rpc: int,
                 min_cases: int) -> tuple[str, dict]:
    fuzz_root = base / "fuzzroot" / "allowed"
    (fuzz_root / "sub").mkdir(parents=True)
    for name, data in list(rel.good_images().items())[:6]:
        (fuzz_root / "sub" / name).write_bytes(data)
    outside = fuzz_root.parent / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(rel.good_images()["rgb.png"])
    (fuzz_root / "escape.png").symlink_to(outside / "secret.png")
    (fuzz_root / "escape_dir").symlink_to(outside)
    (fuzz_root / "loop").symlink_to(fuzz_root)
    stack = rel.ProcStack(base / "fuzzstack", model, stores.redis_url, stores.milvus_uri, allowed_roots=(fuzz_root,))
    tally = rel.Tally()
    per_service: dict[str, rel.Tally] = {}
    started = time.monotonic()
    try:
        stack.start()
        stack.start_workers(1)
        photos = rel.random_photos(24, seed=1)
        jobs = [rel.seed_dataset(stack.address("gateway"), "fuzzds", photos[:16]),
                rel.seed_dataset(stack.address("gateway"), "fuzzcls", photos[16:], classes=("cat", "dog"))]
        ctx = rel.build_context(stack, fuzz_root, photos, jobs, dim=64)
        for full, short in SERVICE_OF.items():
            t = per_service.setdefault(short, rel.Tally())
            with grpc.insecure_channel(stack.address(short)) as channel:
                for target in rel.rpc_targets(full):
                    rel.fuzz_target(channel, target, ctx, per_rpc, t, seed=11)
            log(f"  fuzz {short}: {t.cases} cases, {len(t.findings)} findings")
        extra_seed = 100
        while sum(t.cases for t in per_service.values()) + 2 * 330 < min_cases:
            # RPCs with few distinct requests (empty messages) stop early: top up through the gateway.
            t = per_service["gateway"]
            with grpc.insecure_channel(stack.address("gateway")) as channel:
                for target in rel.rpc_targets("tagalong.v1.Gateway"):
                    rel.fuzz_target(channel, target, ctx, 20, t, seed=extra_seed)
            extra_seed += 1
            log(f"  fuzz gateway top-up: {t.cases} cases")
        corpus = rel.image_corpus(seed=4)
        for short, full in (("gateway", "tagalong.v1.Gateway"), ("embedder", "tagalong.v1.Embedder")):
            t = per_service.setdefault(f"{short} (image files)", rel.Tally())
            with grpc.insecure_channel(stack.address(short)) as channel:
                rel.fuzz_images(channel, corpus, t, service=full)
            log(f"  images via {short}: {t.cases} calls over {len(corpus)} files, {len(t.findings)} findings")
        for t in per_service.values():
            tally.merge(t)
        alive = stack.alive()
        health = stack.health()
        stuck = rel.wait_jobs_ended(stack.redis_url, stack.prefix, timeout=120)
    finally:
        stack.stop()
        rel.clean_redis_prefix(stores.redis_url, stack.prefix)
    seconds = time.monotonic() - started
    bad_codes = {c: n for c, n in tally.codes.items() if c not in {x.name for x in rel.CALLER_CODES}}
    rows = [[name, t.cases, len(t.findings), ", ".join(f"{c} {n}" for c, n in t.codes.most_common()),
             ", ".join(f"{_code_name(c)} {n}" for c, n in t.item_codes.most_common()) or "-"]
            for name, t in per_service.items()]
    text = "## 1. Bad input: fuzzing every public RPC\n\n"
    n_rpcs = sum(len(rel.rpc_targets(full)) for full in SERVICE_OF)
    text += (f"Hypothesis-generated requests built from the proto descriptors ({per_rpc} per RPC, {n_rpcs} RPCs of the "
             "gateway, embedder, label store and clusterer; fields steered to real dataset names, ids, jobs, "
             "image bytes, risky paths, NaN/inf and wrong-dimension vectors, quotes/backslashes/`\" or 1==1` "
             "filters, huge and unicode strings), plus every file of the bad-image corpus (truncated, bit-flipped, "
             "random, bombs, 1x1, CMYK/16-bit/alpha/palette) one by one, in batches and streamed.\n\n")
    text += table(["target", "cases", "findings (UNKNOWN/INTERNAL/crash/hang)", "codes", "per-item error codes"], rows)
    text += (f"\n- total: **{tally.cases} cases**, **{len(tally.findings)} findings**, non-caller codes: "
             f"{bad_codes or 'none'}; {seconds:.0f} s\n"
             f"- processes alive after: {all(alive.values())} ({alive}); health: {health}\n"
             f"- jobs that never ended: {len(stuck)}\n")
    if tally.findings:
        text += "\nFirst findings:\n\n" + "\n".join(f"- `{f[:300]}`" for f in tally.findings[:10]) + "\n"
    return text, {"cases": tally.cases, "findings": len(tally.findings), "alive": all(alive.values()),
                  "serving": set(health.values()) == {"SERVING"}, "stuck": len(stuck)}


def _code_name(number: int) -> str:
    """The name of a google.rpc.Code number (ItemError.code)."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == number), str(number))


# ---- 2. faults -----------------------------------------------------------------------------------------------


def faults_section(base: Path, stores: rel.PrivateStores, model: Path, n: int) -> tuple[str, dict]:
    files = rel.cifar_subset(cifar_dir(), base / "images", n)
    env = {"TAGALONG_GATEWAY_WORKER_BATCH_SIZE": "32", "TAGALONG_GATEWAY_EMBED_BATCH_SIZE": "32",
           "TAGALONG_GATEWAY_MAX_DELIVERIES": "20"}
    stack = rel.ProcStack(base / "faultstack", model, stores.redis_url, stores.milvus_uri,
                          allowed_roots=(base / "images",), services=("embedder", "labelstore", "gateway"),
                          extra_env=env)
    try:
        stack.start()
        report = rel.ingest_under_faults(stack, stores, files, list(rel.FAULTS), timeout=1800, log=log)
    finally:
        stack.stop()
        with contextlib.suppress(Exception):
            rel.clean_redis_prefix(stores.redis_url, stack.prefix)
    rows = [[fault, f"{done}/{n}", f"{down:.1f}"] for fault, done, down in report.faults]
    text = "## 2. Faults during an ingest of CIFAR-10 test photos\n\n"
    text += (f"{n} real photos ingested by path with 2 workers (embedder: tiny random CLIP; label store on a private "
             "Milvus standalone server; a private redis-server with AOF). Faults injected in order at evenly spaced "
             "points of progress: kill -9 of a worker (a replacement started), kill -9 of the embedder and of the "
             "label store (restarted after 1 s), Redis restarted (SIGTERM, AOF, start again on the same port), "
             "Milvus server restarted (same data dir and port).\n\n")
    text += table(["fault", "items done when injected", "seconds until back"], rows)
    text += "\n" + table(
        ["images", "job state", "done", "failed", "rows (Strong count)", "exported rows", "unique ids",
         "images without a row", "dead letters", "seconds"],
        [[n, report.state, report.done, report.failed, report.rows, report.exported, report.unique_ids,
          report.missing, report.dead_letters, f"{report.seconds:.0f}"]])
    text += f"\n- verdict: **{'OK' if report.ok else 'PROBLEMS: ' + '; '.join(report.problems())}**\n"
    if report.failure_sample:
        text += "- failure sample: " + "; ".join(f"`{f[:200]}`" for f in report.failure_sample) + "\n"
    if report.error:
        text += f"- job error: `{report.error[:300]}`\n"
    return text, {"ok": report.ok, "rows": report.rows, "state": report.state, "problems": report.problems()}


# ---- 3. load and graceful shutdown ---------------------------------------------------------------------------


def load_section(base: Path, stores: rel.PrivateStores, model: Path, seconds: float) -> tuple[str, dict]:
    stack = rel.ProcStack(base / "loadstack", model, stores.redis_url, stores.milvus_uri,
                          services=("embedder", "labelstore", "gateway"),
                          extra_env={"TAGALONG_GATEWAY_GRACE_SECONDS": "8"})
    try:
        stack.start()
        stack.start_workers(1)
        photos = rel.random_photos(200, seed=9)
        job_id = rel.seed_dataset(stack.address("gateway"), "loadds", photos, timeout=300)
        queries = photos[:64]
        records = asyncio.run(rel.load_callers(stack.address("gateway"), "loadds", queries, job_id, seconds, 64))
        summary = rel.summarize_load(records, seconds)
        shutdown, _ = asyncio.run(rel.sigterm_under_load(stack, "loadds", queries, job_id, warmup=5.0,
                                                         concurrency=64))
    finally:
        stack.stop()
        rel.clean_redis_prefix(stores.redis_url, stack.prefix)
    rows = [[m, s["calls"], f"{s['rate']:.1f}", s["ok"], s["resource_exhausted"],
             ", ".join(f"{c} {k}" for c, k in s["errors"].items()) or 0, f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}"]
            for m, s in summary.items()]
    text = "## 3. Load: 64 concurrent callers on the gateway\n\n"
    text += (f"{seconds:.0f} s, loopback, one asyncio client process, back-to-back calls: SearchByImage (40%, "
             "image bytes -> embedder -> label store, 200-image dataset), EmbedImages (30%, 4 images), GetJob "
             "(30%). Errors are any code but OK and an explicit RESOURCE_EXHAUSTED.\n\n")
    text += table(["method", "calls", "calls/s", "OK", "RESOURCE_EXHAUSTED", "errors", "p50 ms", "p99 ms"], rows)
    text += ("\n### Graceful shutdown under that load\n\n"
             "64 callers for 5 s, then SIGTERM to the gateway process (grace 8 s), callers keep going 3 s.\n\n")
    text += table(["calls in flight at SIGTERM", "finished OK", "their codes", "exit after SIGTERM (s)", "exit code",
                   "calls started after SIGTERM"],
                  [[shutdown.in_flight, shutdown.in_flight_ok, dict(shutdown.in_flight_codes),
                    f"{shutdown.exit_seconds:.2f}", shutdown.exit_code, dict(shutdown.after)]])
    errors = sum(sum(s["errors"].values()) for m, s in summary.items() if m != "all")
    return text, {"errors": errors, "p50": summary["all"]["p50_ms"], "p99": summary["all"]["p99_ms"],
                  "shutdown_ok": shutdown.in_flight_ok == shutdown.in_flight and shutdown.exit_seconds < 10}


# ---- 4. security ---------------------------------------------------------------------------------------------


def security_section(base: Path, stores: rel.PrivateStores, model: Path) -> tuple[str, dict]:
    from google.protobuf import message_factory

    from tagalong.v1 import gateway_pb2, gateway_pb2_grpc

    token = f"tok-{uuid.uuid4().hex}"
    env = {f"TAGALONG_{s.upper()}_MAX_MESSAGE_MB": "2" for s in rel.SERVICES}
    stack = rel.ProcStack(base / "securestack", model, stores.redis_url, stores.milvus_uri, token=token,
                          log_level="DEBUG", extra_env=env)
    refused: Counter[str] = Counter()
    total: Counter[str] = Counter()
    size_codes: dict[str, str] = {}
    try:
        stack.start()
        stack.start_workers(1)
        bad_md = [(), (("authorization", "Bearer wrong"),), (("authorization", token),)]
        for full, short in SERVICE_OF.items():
            with grpc.insecure_channel(stack.address(short),
                                       options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
                for target in rel.rpc_targets(full):
                    cls = message_factory.GetMessageClass(target.request_desc)  # type: ignore[arg-type]
                    req = [cls()] if target.client_streaming else cls()
                    for md in bad_md:
                        total[short] += 1
                        code = rel.call_rpc(channel, target, req, rel.Tally(), timeout=10, metadata=md)
                        refused[short] += code == grpc.StatusCode.UNAUTHENTICATED
                method, big = rel.oversized_request(short, 3)
                target = next(t for t in rel.rpc_targets(full) if t.method == method)
                code = rel.call_rpc(channel, target, big, rel.Tally(), timeout=30,
                                    metadata=(("authorization", f"Bearer {token}"),))
                size_codes[short] = code.name
        with grpc.insecure_channel(stack.address("gateway")) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            md = (("authorization", f"Bearer {token}"),)
            stub.CreateDataset(gateway_pb2.CreateDatasetRequest(name="secure"), timeout=30, metadata=md)
            msgs = [gateway_pb2.IngestRequest(header=gateway_pb2.IngestHeader(dataset="secure"))]
            msgs += [gateway_pb2.IngestRequest(item=gateway_pb2.IngestItem(content=p))
                     for p in rel.random_photos(8, seed=2)]
            job_id = stub.Ingest(iter(msgs), timeout=60, metadata=md).job_id
            deadline = time.monotonic() + 120
            state = 0
            while time.monotonic() < deadline and state not in (3, 4, 5):
                state = stub.GetJob(gateway_pb2.GetJobRequest(job_id=job_id), timeout=10, metadata=md).job.state
                time.sleep(0.3)
    finally:
        stack.stop()
        rel.clean_redis_prefix(stores.redis_url, stack.prefix)
    logs = stack.all_logs_full()
    leaks = logs.count(token)
    rows = [[s, total[s], refused[s], size_codes.get(s, "-")] for s in total]
    text = "## 4. Security\n\n"
    text += ("Every service started as `python -m ...` with TAGALONG_AUTH_TOKEN set, DEBUG logs and a 2 MiB message "
             "limit. Each RPC called with no token, a wrong token and the token without 'Bearer'; then a 3 MiB "
             "request with the right token; then an authenticated ingest through a worker.\n\n")
    text += table(["service", "unauthenticated calls", "refused UNAUTHENTICATED", "3 MiB request"], rows)
    text += (f"\n- authenticated ingest job ended in state {gateway_pb2.JobState.Name(state)}\n"
             f"- log lines written (DEBUG): {len(logs.splitlines())}; occurrences of the token in them: **{leaks}**\n"
             "- static check (tests/unit/test_security_static.py): no pickle/marshal/eval/exec/yaml.load/shell=True "
             "on caller data under services/, gateway/, tagalong/\n")
    ok = all(refused[s] == total[s] for s in total) and leaks == 0 and \
        all(c == "RESOURCE_EXHAUSTED" for c in size_codes.values())
    return text, {"ok": ok, "leaks": leaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1k images, 25 cases per RPC, 15 s of load")
    parser.add_argument("--only", nargs="*", choices=["fuzz", "faults", "load", "security"])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, Milvus and Redis data)")
    args = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every process and server started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    per_rpc, n_images, load_seconds = (25, 1000, 15.0) if args.quick else (250, 10_000, 60.0)
    sections = args.only or ["fuzz", "security", "load", "faults"]
    model = ensure_model()
    base = Path(tempfile.mkdtemp(prefix="bench_reliability_", dir=ROOT / "var"))
    stores = rel.PrivateStores(base / "stores")
    parts: list[str] = []
    verdicts: dict[str, dict] = {}
    started = time.monotonic()
    try:
        stores.start_redis()
        stores.start_milvus()
        for name in sections:
            log(f"== {name}")
            t0 = time.monotonic()
            if name == "fuzz":
                text, verdict = fuzz_section(base, stores, model, per_rpc, 1000 if args.quick else 10_000)
            elif name == "faults":
                text, verdict = faults_section(base, stores, model, n_images)
            elif name == "load":
                text, verdict = load_section(base, stores, model, load_seconds)
            else:
                text, verdict = security_section(base, stores, model)
            verdicts[name] = verdict
            parts.append(text)
            log(f"   {name}: {json.dumps(verdict, default=str)} ({time.monotonic() - t0:.0f} s)")
    finally:
        stores.stop()
        if args.keep or any(not v.get("ok", True) for v in verdicts.values()):
            log(f"work folder kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    title = "Reliability and security" + (" (--quick)" if args.quick else "")
    summary = table(["part", "verdict"], [[k, json.dumps(v, default=str)] for k, v in verdicts.items()])
    body = header(title) + f"Total wall time {time.monotonic() - started:.0f} s.\n\n## Summary\n\n{summary}\n"
    body += "\n".join(parts)
    write("reliability", body)
    sys.exit(0)


if __name__ == "__main__":
    main()
