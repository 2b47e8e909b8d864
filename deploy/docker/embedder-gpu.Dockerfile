# syntax=docker/dockerfile:1.7
# Embedder image, GPU: ONNX Runtime with the CUDA execution provider (onnxruntime-gpu) behind
# `python -m services.embedder` on :50051. No torch. Build from the repository root:
#   docker build -f deploy/docker/embedder-gpu.Dockerfile -t tagalong-embedder-gpu:TAG .
# CUDA major must match the wheel: onnxruntime-gpu==1.31.1 from PyPI links libcudart.so.13,
# libcublas(Lt).so.13 (readelf -d onnxruntime/capi/libonnxruntime_providers_cuda.so) and uses cuDNN 9,
# so the base is a CUDA 13 + cuDNN 9 runtime image. Check after a build, on a GPU node:
#   python -c "import onnxruntime as ort; print(ort.get_available_providers())"   # lists CUDAExecutionProvider
# Nodes need an NVIDIA driver for CUDA 13 (>= 580; see deploy/k8s/README.md, GPU nodes).
# Models are never baked in: TAGALONG_EMBEDDER_MODEL_DIR is a volume (deploy/k8s). Pin CUDA_IMAGE by digest
# in the registry you build from.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# --- build: generate the gRPC code and install the package into /opt/venv ---
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Ubuntu's own python3.12 (the same one the runtime stage installs, so /opt/venv's links stay valid).
# Package versions are not pinned: the base image tag pins the Ubuntu release, and its security updates
# should land on every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3.12 -m venv /opt/codegen \
 && /opt/codegen/bin/pip install --no-cache-dir grpcio-tools==1.85.1 mypy-protobuf==5.1.0 protobuf==7.36.2
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY scripts/ scripts/
COPY tagalong/ tagalong/
COPY services/ services/
COPY gateway/ gateway/
RUN /opt/codegen/bin/python scripts/gen_protos.py \
 && python3.12 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ".[gpu]" \
 && /opt/venv/bin/python -m pip uninstall --yes pip

# --- runtime: CUDA + cuDNN runtime libraries, the interpreter, the venv; no compilers ---
FROM ${CUDA_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tagalong-embedder-gpu" \
      org.opencontainers.image.description="tagalong embedder (ONNX Runtime, CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends python3.12 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tagalong \
 && useradd --system --uid 10001 --gid tagalong --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tagalong
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TAGALONG_EMBEDDER_HOST=0.0.0.0 \
    TAGALONG_EMBEDDER_PORT=50051 \
    TAGALONG_EMBEDDER_METRICS_PORT=9090 \
    TAGALONG_EMBEDDER_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["python", "-m", "services.embedder"]
