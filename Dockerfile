# syntax=docker/dockerfile:1
# The PACS Extension Server image: `pacs-grpc serve` by default; the same image runs
# `pacs-grpc migrate` (the migrations Job) and `pacs-grpc envoy-config` (the Envoy sidecar's
# init container). tests/e2e/test_wheel_serves.py installs and runs exactly what this file
# installs, since no Docker engine runs in CI.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

# Build the three wheels (the generated pacs.v1 stubs, the Python client whose token
# providers the PACS link uses, and the server, which carries the migrations and the Envoy
# descriptor set) and install them into a virtual environment without pip. The local
# development stack (devstack/) is never copied in. Runtime dependencies come from
# requirements/runtime.lock only: exact versions, each file checked against its hash
# (`make lock` writes it), built wheels only. The wheels are built here, so they are
# installed without dependencies, and `pip check` fails the build if the lock lacks
# anything they need.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/runtime.lock requirements/runtime.lock
COPY clients/protos/ clients/protos/
COPY clients/python/ clients/python/
COPY pyproject.toml README.md ./
COPY migrations/ migrations/
COPY deploy/envoy/ deploy/envoy/
COPY pacs_grpc/ pacs_grpc/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels \
       ./clients/protos ./clients/python . \
    && python -m venv --without-pip /opt/pacs \
    && python -m pip --python /opt/pacs/bin/python install --no-cache-dir \
       --require-hashes --only-binary=:all: -r requirements/runtime.lock \
    && python -m pip --python /opt/pacs/bin/python install --no-cache-dir --no-deps /wheels/*.whl \
    && python -m pip --python /opt/pacs/bin/python check

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="pacs-grpc" \
      org.opencontainers.image.description="PACS Extension Server: annotations and segmentation masks over gRPC"
# The uid and gid the Kubernetes manifests run as (deploy/k8s, runAsUser).
RUN groupadd --system --gid 10001 pacs \
    && useradd --system --uid 10001 --gid pacs --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pacs
COPY --from=build /opt/pacs /opt/pacs
# Bytecode was compiled at install; the root filesystem is read-only at run time.
ENV PATH=/opt/pacs/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# gRPC (GRPC_PORT) and Prometheus metrics (METRICS_PORT).
EXPOSE 50051 9464
# No HEALTHCHECK: Kubernetes probes grpc.health.v1 natively (deploy/k8s/deployment.yaml).
ENTRYPOINT ["pacs-grpc"]
CMD ["serve"]
