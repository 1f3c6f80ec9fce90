# syntax=docker/dockerfile:1
# editflow's images. Two targets, one file:
#   control-plane  editflow/operator and editflow/gateway: the operator, the gateway, the CLI; no torch
#   worker         editflow/worker: the same plus the `inference` extra (torch, diffusers, ...)
#
# On a machine with internet access (docker, podman, buildah):
#   docker build --target control-plane -t REGISTRY/editflow/operator:0.1.0 .
#   docker build --target worker        -t REGISTRY/editflow/worker:0.1.0 .
# Python packages then come from the package index, pinned by constraints.txt.
#
# `make images` builds this same file with buildah and PYTHON_PACKAGES=wheelhouse: the packages
# come from images/wheelhouse/, which the host fills with its own pip settings, because a fresh
# root filesystem does not trust the certificate chain of a site's package proxy.
#
# The layers are ordered by how often they change: OS and user, then the control plane's
# dependencies, then (worker) the multi-GB inference dependencies, and only then editflow's own
# wheel. A change to editflow's code rebuilds and re-pushes one layer of about a megabyte.
#
# Both images run as uid/gid 10001 (numeric, so `runAsNonRoot` can verify it) and need no write
# access to their root filesystem: HOME, TMPDIR and every cache point below /tmp, which the chart
# mounts as an emptyDir.

ARG BASE_IMAGE=debian:bookworm-slim
# Where Python packages come from: `index` (the package index, pinned by constraints.txt) or
# `wheelhouse` (only images/wheelhouse/, as `make images` does).
ARG PYTHON_PACKAGES=index

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base
# Docker Hub's debian:bookworm-slim has no Python; the base `make images` makes with mmdebstrap
# already has it, so that build needs no apt network access. bookworm's python3 is 3.11.
RUN set -eux; \
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 editflow; \
    useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin editflow; \
    python3 -m venv /opt/editflow
ENV PATH=/opt/editflow/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Installs with the pip options of PYTHON_PACKAGES (the wheelhouse is bind-mounted, never a layer).
COPY images/pip-install.sh /usr/local/lib/editflow/pip-install

# ---------------------------------------------------------------------------------------------
# The requirement lists, from pyproject.toml alone: the dependency layers below are rebuilt only
# when a list or constraints.txt changes (COPY --from compares contents).
FROM base AS requirements
COPY pyproject.toml images/requirements.py /build/
RUN mkdir /requirements \
    && python3 /build/requirements.py /build/pyproject.toml control-plane > /requirements/control-plane.txt \
    && python3 /build/requirements.py /build/pyproject.toml inference > /requirements/inference.txt

# ---------------------------------------------------------------------------------------------
# editflow's own wheel, built from the sources (setuptools and wheel from the same source of packages).
FROM base AS package
COPY pyproject.toml README.md /build/
COPY src/ /build/src/
COPY events/ /build/events/
COPY operator/ /build/operator/
COPY inference/ /build/inference/
COPY gateway/ /build/gateway/
ARG PYTHON_PACKAGES
RUN --mount=type=bind,source=images/wheelhouse,target=/wheelhouse \
    /usr/local/lib/editflow/pip-install wheel --no-deps --wheel-dir /dist /build

# ---------------------------------------------------------------------------------------------
FROM base AS control-plane-deps
COPY constraints.txt /opt/editflow/share/editflow/constraints.txt
COPY --from=requirements /requirements/control-plane.txt /opt/editflow/share/editflow/
ARG PYTHON_PACKAGES
RUN --mount=type=bind,source=images/wheelhouse,target=/wheelhouse \
    /usr/local/lib/editflow/pip-install install -c /opt/editflow/share/editflow/constraints.txt \
        -r /opt/editflow/share/editflow/control-plane.txt

# ---------------------------------------------------------------------------------------------
FROM control-plane-deps AS worker-deps
COPY --from=requirements /requirements/inference.txt /opt/editflow/share/editflow/
ARG PYTHON_PACKAGES
RUN --mount=type=bind,source=images/wheelhouse,target=/wheelhouse \
    /usr/local/lib/editflow/pip-install install -c /opt/editflow/share/editflow/constraints.txt \
        -r /opt/editflow/share/editflow/inference.txt

# ---------------------------------------------------------------------------------------------
FROM control-plane-deps AS control-plane
COPY --from=package /dist/ /opt/editflow/share/editflow/dist/
# --no-deps: the layer below holds every dependency; `pip check` proves it.
RUN /opt/editflow/bin/pip install --no-index --no-deps /opt/editflow/share/editflow/dist/*.whl \
    && /opt/editflow/bin/pip check \
    && ! /opt/editflow/bin/python -c 'import torch' 2>/dev/null
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["editflow"]
CMD ["--help"]
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/editflow/editflow
LABEL org.opencontainers.image.title="editflow control plane" \
      org.opencontainers.image.description="editflow operator, gateway and CLI (no torch); chart images editflow/operator and editflow/gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.editflow.image.target="control-plane"

# ---------------------------------------------------------------------------------------------
# The last stage, so that a plain `docker build .` builds the worker.
FROM worker-deps AS worker
COPY --from=package /dist/ /opt/editflow/share/editflow/dist/
RUN /opt/editflow/bin/pip install --no-index --no-deps /opt/editflow/share/editflow/dist/*.whl \
    && /opt/editflow/bin/pip check
# PyPI's torch wheels carry the CUDA runtime; the node's NVIDIA container toolkit mounts the
# driver (>= 580 for these CUDA 13 builds) when these variables ask for compute.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TORCH_HOME=/tmp/torch \
    TRITON_CACHE_DIR=/tmp/.triton \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["editflow"]
CMD ["worker", "--help"]
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/editflow/editflow
LABEL org.opencontainers.image.title="editflow worker" \
      org.opencontainers.image.description="editflow GPU worker: LongCat-Image-Edit with diffusers and torch (CUDA 13); chart image editflow/worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.editflow.image.target="worker"
