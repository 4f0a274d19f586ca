# syntax=docker/dockerfile:1
#
# loraplane images. Build with BuildKit (the default builder since Docker 23), which builds only
# the stages the chosen target needs:
#   docker build -t loraplane .                     # control plane (last stage): api, worker, keys, replay
#   docker build --target node -t loraplane-node .  # GPU node agent on top of the vLLM image
# docker-compose.yml builds both. Not built on the development machine (no Docker engine there).

############################ build: the control plane's virtualenv ############################
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only in this stage, in case a dependency has no wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/loraplane
ENV PATH=/opt/loraplane/bin:$PATH

WORKDIR /src
# Only what the package needs (no .dockerignore: .venv/, .git/ and data stay out this way).
# README.md is optional here (pyproject names it; the wildcard lets the build go on without it).
COPY pyproject.toml README.md* ./
COPY streams ./streams
COPY infra ./infra
COPY api ./api
COPY agents ./agents
RUN pip install .


############################ node: node agent + vLLM, for GPU hosts ############################
# The vLLM image brings vllm on its own Python (python3, 3.12). loraplane needs Python 3.11, so it
# gets its own standalone interpreter and virtualenv under /opt; that also keeps vLLM's tightly
# pinned dependencies apart from ours, as DESIGN.md asks. The venv is deliberately NOT on PATH, so
# `python3` stays vLLM's interpreter (LORAPLANE_VLLM_PYTHON=python3); only the `loraplane` script
# is linked into /usr/local/bin.
FROM vllm/vllm-openai:v0.11.0 AS node

COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /opt/uv/bin/uv

ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PYTHON_DOWNLOADS=automatic \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

COPY pyproject.toml README.md* /src/
COPY streams /src/streams
COPY infra /src/infra
COPY api /src/api
COPY agents /src/agents
RUN /opt/uv/bin/uv venv --python 3.11 /opt/loraplane \
    && /opt/uv/bin/uv pip install --python /opt/loraplane/bin/python /src \
    && ln -s /opt/loraplane/bin/loraplane /usr/local/bin/loraplane \
    && rm -rf /src

RUN groupadd --system --gid 10001 loraplane \
    && useradd --system --uid 10001 --gid loraplane --create-home --home-dir /home/loraplane \
        --shell /usr/sbin/nologin loraplane \
    && mkdir -p /data /secret-keys \
    && chown loraplane:loraplane /data /secret-keys \
    && chmod 700 /secret-keys

# /data holds the node's adapter cache and (HF_HOME) the base-model weights vLLM downloads;
# mount a volume there so they survive a restart.
ENV PYTHONUNBUFFERED=1 \
    LORAPLANE_DATA_DIR=/data \
    LORAPLANE_VLLM_PYTHON=python3 \
    HF_HOME=/data/huggingface

USER loraplane
WORKDIR /home/loraplane
# The vLLM image's entrypoint starts vLLM itself; here the node agent starts it.
ENTRYPOINT []
CMD ["loraplane", "node"]


############################ control plane (default target) ############################
# `loraplane api` (default), `loraplane worker`, `loraplane keys create --role admin --name NAME`,
# `loraplane replay`.
FROM python:3.11-slim AS control-plane

RUN groupadd --system --gid 10001 loraplane \
    && useradd --system --uid 10001 --gid loraplane --create-home --home-dir /home/loraplane \
        --shell /usr/sbin/nologin loraplane \
    && mkdir -p /data /secret-keys \
    && chown loraplane:loraplane /data /secret-keys \
    && chmod 700 /secret-keys

COPY --from=build /opt/loraplane /opt/loraplane

ENV PATH=/opt/loraplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LORAPLANE_DATA_DIR=/data \
    LORAPLANE_API_HOST=0.0.0.0 \
    LORAPLANE_API_PORT=8000

USER loraplane
WORKDIR /home/loraplane
EXPOSE 8000
CMD ["loraplane", "api"]
