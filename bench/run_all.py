"""`make bench`: every benchmark and the labelling evaluation, one after another, into bench/results/.

`--quick` (or BENCH_QUICK=1) runs the short versions. A benchmark that fails is reported and the
others still run; the exit status is non-zero when any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench.common import RESULTS

SUITES = ["bench.bench_embedder", "bench.bench_labelstore", "bench.bench_clusterer", "bench.eval_labeling",
          "bench.bench_gateway"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    parser.add_argument("--only", nargs="*", help="module names to run (default: all)")
    args = parser.parse_args()
    failed = []
    for module in args.only or SUITES:
        cmd = [sys.executable, "-m", module, *(["--quick"] if args.quick else [])]
        print(f"== {' '.join(cmd)}", flush=True)
        started = time.monotonic()
        status = subprocess.call(cmd)
        print(f"== {module}: status {status} in {time.monotonic() - started:.0f}s", flush=True)
        if status != 0:
            failed.append(module)
    print(f"results in {RESULTS}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
