# syntax=docker/dockerfile:1.7
# Embedder image, CPU: ONNX Runtime (CPU) behind `python -m services.embedder` on :50051. No torch.
# Build from the repository root (the context must hold pyproject.toml, protos/ and the packages):
#   docker build -f deploy/docker/embedder-cpu.Dockerfile -t tagalong-embedder-cpu:TAG .
# Models are never baked in: the embedder reads TAGALONG_EMBEDDER_MODEL_DIR from a volume (deploy/k8s).
# Pin PYTHON_IMAGE by digest (python:3.11.14-slim-bookworm@sha256:...) in the registry you build from.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: generate the gRPC code and install the package into /opt/venv ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Code generation tools live in their own venv so that they never reach the runtime image.
RUN python -m venv /opt/codegen \
 && /opt/codegen/bin/pip install --no-cache-dir grpcio-tools==1.85.1 mypy-protobuf==5.1.0 protobuf==7.36.2
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY scripts/ scripts/
COPY tagalong/ tagalong/
COPY services/ services/
COPY gateway/ gateway/
# Non-editable install: the runtime image needs /opt/venv only, not /src. pip writes the .pyc files
# here, so a read-only root filesystem costs nothing at start-up. pip/setuptools leave the final venv.
RUN /opt/codegen/bin/python scripts/gen_protos.py \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir ".[cpu]" \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

# --- runtime: the interpreter, the venv and nothing to build with ---
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tagalong-embedder-cpu" \
      org.opencontainers.image.description="tagalong embedder (ONNX Runtime, CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so that Kubernetes can check runAsNonRoot without resolving names.
RUN groupadd --system --gid 10001 tagalong \
 && useradd --system --uid 10001 --gid tagalong --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tagalong
COPY --from=build /opt/venv /opt/venv
# HOME and MPLCONFIGDIR point at /tmp, the only writable path (an emptyDir) under a read-only root.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    TAGALONG_EMBEDDER_HOST=0.0.0.0 \
    TAGALONG_EMBEDDER_PORT=50051 \
    TAGALONG_EMBEDDER_METRICS_PORT=9090
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9090
ENTRYPOINT ["python", "-m", "services.embedder"]
