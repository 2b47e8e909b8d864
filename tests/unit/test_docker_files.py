"""Dockerfiles: hadolint-clean, multi-stage, pinned bases, non-root, no build tools or torch where they
must not be, and a build context (.dockerignore) that holds what the build stages copy and nothing else.
No Docker engine runs in CI, so nothing here builds an image."""

from __future__ import annotations

import fnmatch
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
SERVING = {
    # image: (module run, gRPC port, pyproject extra installed)
    "embedder-cpu": ("services.embedder", 50051, "cpu"),
    "embedder-gpu": ("services.embedder", 50051, "gpu"),
    "labelstore": ("services.labelstore", 50052, None),
    "clusterer": ("services.clusterer", 50053, None),
    "gateway": ("gateway", 50050, None),
}
ALL_IMAGES = (*SERVING, "model-export")
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make ", "cmake", "python3-dev", "python3.12-dev", "-dev ")


def dockerfile(image: str) -> Path:
    return DOCKER / f"{image}.Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instr in instructions(path):
        if instr[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(instr)
    return out


def base_images(path: Path) -> list[str]:
    """Resolved FROM images (ARG defaults substituted)."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", path.read_text(), flags=re.M))
    images = []
    for name, value in instructions(path):
        if name == "FROM":
            image = value.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            images.append(image)
    return images


def hadolint_bin() -> Path:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip(f"hadolint is pinned for Linux x86_64, not {platform.system()} {platform.machine()}")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "k8s" / "tools.sh")], capture_output=True, text=True,
                          env=env, timeout=600)
    if proc.returncode != 0:
        why = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
        pytest.skip(f"deploy/k8s/tools.sh could not install hadolint: {' / '.join(why[-3:])[-500:]}")
    return Path(proc.stdout.strip().splitlines()[-1]) / "hadolint"


def test_every_image_has_a_dockerfile() -> None:
    found = {p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")}
    assert found == set(ALL_IMAGES)


@pytest.mark.parametrize("image", ALL_IMAGES)
def test_hadolint_is_clean(image: str) -> None:
    proc = subprocess.run([str(hadolint_bin()), "--no-color", "--failure-threshold", "info", str(dockerfile(image))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint can fail: an unpinned base, root user, apt without cleanup."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nCMD python app.py\n")
    proc = subprocess.run([str(hadolint_bin()), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag


@pytest.mark.parametrize("image", ALL_IMAGES)
def test_multi_stage_with_pinned_bases(image: str) -> None:
    path = dockerfile(image)
    assert len(stages(path)) >= 2, "build and runtime stages"
    bases = base_images(path)
    for base in bases:
        name, _, tag = base.rpartition(":")
        assert name and re.match(r"^\d+\.\d+\.\d+", tag), f"{base}: pin an exact version tag"
    # Both stages from one base, so the venv built in one runs in the other.
    assert len(set(bases)) == 1
    if image == "embedder-gpu":
        # onnxruntime-gpu 1.31.1's CUDA provider links libcudart.so.13 / libcublas.so.13 and needs cuDNN 9.
        assert bases[0].startswith("nvidia/cuda:13.") and "cudnn" in bases[0] and "runtime" in bases[0]
        pyproject = (ROOT / "pyproject.toml").read_text()
        assert '"onnxruntime-gpu==1.31.1"' in pyproject, "onnxruntime-gpu moved: re-check its CUDA major"
    else:
        assert bases[0].startswith("python:3.11.") and "slim" in bases[0]


@pytest.mark.parametrize("image", ALL_IMAGES)
def test_runtime_stage_is_non_root_and_has_no_build_tools(image: str) -> None:
    runtime = stages(dockerfile(image))[-1]
    users = [args for name, args in runtime if name == "USER"]
    assert users, "runtime stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, f"USER {users[-1]}: numeric, non-root, outside host uid ranges"
    runs = " ".join(args for name, args in runtime if name == "RUN") + " "
    for tool in BUILD_TOOLS:
        assert tool not in runs, f"{tool.strip()} installed in the runtime stage"
    assert "pip install" not in runs, "the runtime stage copies the venv, it installs nothing"
    copies = [args for name, args in runtime if name == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"], copies


@pytest.mark.parametrize("image", list(SERVING))
def test_serving_images_run_their_service_without_torch(image: str) -> None:
    module, port, extra = SERVING[image]
    path = dockerfile(image)
    text = path.read_text()
    installs = re.findall(r'/opt/venv/bin/pip install --no-cache-dir "([^"]+)"', text)
    assert installs == [f".[{extra}]" if extra else "."], installs
    assert "export" not in installs[0] and "torch" not in text.lower().replace("no torch", "")
    runtime = stages(path)[-1]
    entry = " ".join(args for name, args in runtime if name in ("ENTRYPOINT", "CMD"))
    assert f'"{module}"' in entry, entry
    exposed = " ".join(args for name, args in runtime if name == "EXPOSE").split()
    assert str(port) in exposed and "9090" in exposed
    env = " ".join(args for name, args in runtime if name == "ENV")
    prefix = "EMBEDDER" if image.startswith("embedder") else image.upper()
    assert f"TAGALONG_{prefix}_HOST=0.0.0.0" in env and f"TAGALONG_{prefix}_PORT={port}" in env
    assert (ROOT / Path(*module.split(".")) / "__main__.py").is_file(), f"python -m {module} has no __main__.py"


def test_gateway_image_also_runs_the_workers() -> None:
    assert (ROOT / "gateway" / "worker.py").is_file()
    runtime = stages(dockerfile("gateway"))[-1]
    assert ("ENTRYPOINT", '["python", "-m"]') in runtime and ("CMD", '["gateway"]') in runtime


def test_only_the_model_export_image_holds_torch() -> None:
    text = dockerfile("model-export").read_text()
    assert '".[cpu,export]"' in text
    assert 'ENTRYPOINT ["python", "-m", "services.embedder.export"]' in text


def test_gpu_image_uses_onnxruntime_gpu_and_cuda_providers() -> None:
    text = dockerfile("embedder-gpu").read_text()
    assert '".[gpu]"' in text and '".[cpu]"' not in text
    assert "TAGALONG_EMBEDDER_PROVIDERS=CUDAExecutionProvider" in text


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore semantics for the patterns used here (last match wins, ! re-includes)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        candidates = [path] + [str(Path(*Path(path).parts[:i])) for i in range(1, len(Path(path).parts))]
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pat[3:]) for part in Path(path).parts) or fnmatch.fnmatch(path, pat[3:])
        else:
            hit = any(fnmatch.fnmatch(c, pat) for c in candidates)
        if hit:
            result = not negate
    return result


def test_dockerignore_copies_are_identical_and_keep_the_context_small() -> None:
    source = DOCKER / ".dockerignore"
    for image in ALL_IMAGES:
        copy = DOCKER / f"{image}.Dockerfile.dockerignore"
        assert copy.read_text() == source.read_text(), f"{copy.name} differs from .dockerignore"
    patterns = [line.strip() for line in source.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for kept in ("pyproject.toml", "README.md", "protos/tagalong/v1/embedder.proto", "scripts/gen_protos.py",
                 "tagalong/runtime/server.py", "services/embedder/__init__.py", "gateway/__init__.py"):
        assert not _ignored(patterns, kept), kept
    for dropped in (".venv/bin/python", "var/tools/bin/kubectl", ".git/HEAD", "tagalong/v1/common_pb2.py",
                    "tests/conftest.py", "services/embedder/__pycache__/x.pyc", "deploy/k8s/README.md",
                    "tagalong.egg-info/PKG-INFO", "bench/results/x.md"):
        assert _ignored(patterns, dropped), dropped


@pytest.mark.parametrize("image", ALL_IMAGES)
def test_everything_the_build_copies_is_in_the_context(image: str) -> None:
    source = DOCKER / ".dockerignore"
    patterns = [line.strip() for line in source.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for name, args in stages(dockerfile(image))[0]:
        if name != "COPY" or args.startswith("--from"):
            continue
        for src in args.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not _ignored(patterns, src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"


def _context_files() -> list[Path]:
    """The files `docker build .` would send, per deploy/docker/.dockerignore (pruning ignored folders)."""
    patterns = [line.strip() for line in (DOCKER / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    files = []
    for folder, dirs, names in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not _ignored(patterns, str(rel / d))]
        files += [rel / n for n in names if not _ignored(patterns, str(rel / n))]
    return files


@pytest.mark.slow
def test_build_stage_installs_a_working_venv_without_torch(tmp_path: Path) -> None:
    """What the CPU Dockerfiles' build stage does, run here without Docker: copy the context the
    .dockerignore lets through, generate the code in a separate venv, install the package non-editable,
    drop pip; then every service module imports from outside the source tree, and torch, grpc_tools and
    pip are absent. (~3 minutes: it installs every dependency.)"""
    import shutil

    context = tmp_path / "src"
    for rel in _context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    assert not (context / "tagalong" / "v1").exists() and not (context / ".venv").exists()

    def run(*cmd: str | Path, cwd: Path = context) -> str:
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        return proc.stdout

    codegen, venv = tmp_path / "codegen", tmp_path / "venv"
    run(sys.executable, "-m", "venv", codegen)
    run(codegen / "bin" / "pip", "install", "-q", "grpcio-tools==1.85.1", "mypy-protobuf==5.1.0", "protobuf==7.36.2")
    run(codegen / "bin" / "python", "scripts/gen_protos.py")
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", ".[cpu]")
    run(venv / "bin" / "python", "-m", "pip", "uninstall", "--yes", "-q", "pip", "setuptools")
    shutil.rmtree(context)  # the runtime stage has /opt/venv only
    probe = (
        "import importlib, importlib.util\n"
        "for m in ('services.embedder.__main__', 'services.labelstore.__main__', 'services.clusterer.__main__',\n"
        "          'gateway.__main__', 'gateway.worker', 'services.embedder.manifest', 'tagalong.v1'):\n"
        "    importlib.import_module(m)\n"
        "print([importlib.util.find_spec(m) is None for m in ('torch', 'grpc_tools', 'pip')])\n"
    )
    out = run(venv / "bin" / "python", "-c", probe, cwd=tmp_path)
    assert out.strip() == "[True, True, True]", out
