"""Init step of the embedder (and check of the model Job): wait for a model folder, verify its manifest.

Usage: python wait_for_model.py [--check-only] [--timeout SECONDS] MODEL_DIR
Every file listed in manifest.json must exist with the recorded sha256 (services.embedder.manifest).
Exit 0 when verified; 3 when the folder is still missing after the timeout or fails verification (any
other status is a crash of this script, which the model Job must not mistake for "export needed").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.embedder.manifest import MANIFEST, ManifestError, load_manifest

NOT_VERIFIED = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--check-only", action="store_true", help="do not wait for the folder to appear")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for manifest.json")
    args = parser.parse_args()
    manifest = args.model_dir / MANIFEST
    deadline = time.monotonic() + (0 if args.check_only else args.timeout)
    while not manifest.is_file():
        if time.monotonic() >= deadline:
            print(f"wait_for_model: {manifest} is missing (has the model-export Job run?)", file=sys.stderr)
            return NOT_VERIFIED
        time.sleep(5)
    try:
        loaded = load_manifest(args.model_dir, verify=True)
    except ManifestError as err:
        print(f"wait_for_model: {err}", file=sys.stderr)
        return NOT_VERIFIED
    print(f"wait_for_model: {args.model_dir} verified ({loaded.model_id}, {len(loaded.files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
