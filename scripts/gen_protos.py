"""Generate tagalong/v1 (messages, gRPC stubs and typed .pyi stubs) from protos/.

Generated code is never committed: every build generates it (`make protos`, a dependency of every
target). `--check` regenerates into a temporary folder and fails when tagalong/v1 differs, so a stale
tree is caught in `make test`.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("tagalong") / "v1"


def generate(out_root: Path) -> Path:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    out_root.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT, stdout=subprocess.DEVNULL)
    out = out_root / PACKAGE
    (out / "__init__.py").write_text('"""Generated from protos/tagalong/v1 by scripts/gen_protos.py; do not edit."""\n')
    return out


def stale_files(fresh: Path, target: Path) -> list[str]:
    """Files that differ between a fresh generation and the tree (missing, extra or changed)."""
    if not target.exists():
        return ["<missing tree>"]
    cmp = filecmp.dircmp(fresh, target, ignore=["__pycache__"])
    changed = [name for name in cmp.common_files if not filecmp.cmp(fresh / name, target / name, shallow=False)]
    return sorted(cmp.left_only + cmp.right_only + changed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when the generated tree is stale")
    args = parser.parse_args()
    target = ROOT / PACKAGE
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = generate(Path(tmp))
            stale = stale_files(fresh, target)
            if stale:
                print(f"generated code in {PACKAGE} is stale ({', '.join(stale)}): run `make protos`",
                      file=sys.stderr)
                return 1
        print(f"{PACKAGE} matches protos/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(fresh, target)
    print(f"generated {PACKAGE} from {PROTO_ROOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
