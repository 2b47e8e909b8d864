# syntax=docker/dockerfile:1.7
# Model export image (init/Job only, never serving): torch + transformers + onnx, running
# `python -m services.embedder.export MODEL --out DIR`, which writes ONNX files and manifest.json (the
# sha256 of every file) into a volume that the embedder then verifies and serves. Build from the repo root:
#   docker build -f deploy/docker/model-export.Dockerfile -t tagalong-model-export:TAG .
# torch is large: pass --build-arg PIP_EXTRA_INDEX_URL=<a CPU-only torch index> to keep CUDA wheels out.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build ---
FROM ${PYTHON_IMAGE} AS build
# An ARG is in the environment of every RUN below, where pip reads it.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/codegen \
 && /opt/codegen/bin/pip install --no-cache-dir grpcio-tools==1.85.1 mypy-protobuf==5.1.0 protobuf==7.36.2
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY scripts/ scripts/
COPY tagalong/ tagalong/
COPY services/ services/
COPY gateway/ gateway/
# The cpu extra too: the exporter checks ONNX Runtime against torch (parity) before writing the manifest.
RUN /opt/codegen/bin/python scripts/gen_protos.py \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ".[cpu,export]" \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

# --- runtime ---
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tagalong-model-export" \
      org.opencontainers.image.description="tagalong model export Job (torch -> ONNX + manifest)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 tagalong \
 && useradd --system --uid 10001 --gid tagalong --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tagalong
COPY --from=build /opt/venv /opt/venv
# torch, transformers and matplotlib write caches under HOME / *_CACHE: all on the /tmp emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HOME=/tmp/huggingface \
    TORCH_HOME=/tmp/torch
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["python", "-m", "services.embedder.export"]
