# syntax=docker/dockerfile:1
# scoter serving image: the [serve] extra only (no torch, no LLM), a non-root user, bundles and the experiments file
# mounted as volumes. CPU (default):
#   docker build -t scoter:cpu .
# GPU (onnxruntime-gpu on a CUDA + cuDNN runtime base that has, or can apt-install, python3.11):
#   docker build -t scoter:gpu --build-arg ORT_PACKAGE=onnxruntime-gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 .
# The builder and runtime stages share one base so the venv's interpreter is the runtime's interpreter.

ARG BASE_IMAGE=python:3.11-slim

# --- base: the runtime image plus python3.11 (already there on python:3.11-slim; apt on a CUDA Ubuntu image) ---
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# --- builder: a venv with the project and its [serve] extra, one ONNX Runtime package ---
FROM base AS builder
ARG ORT_PACKAGE=onnxruntime
WORKDIR /src
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY scoter ./scoter
COPY service ./service
COPY deploy/docker/check_image.py /opt/check_image.py
RUN pip install ".[serve]"
# onnxruntime-gpu also carries the CPU provider and shares the module name: swap, never install both.
RUN if [ "$ORT_PACKAGE" != "onnxruntime" ]; then \
        pip uninstall -y onnxruntime && pip install "$ORT_PACKAGE"; \
    fi
RUN python /opt/check_image.py --ort-package "$ORT_PACKAGE"

# --- runtime ---
FROM base AS runtime
LABEL org.opencontainers.image.title="scoter" \
      org.opencontainers.image.description="SCoTER recommendation service (ONNX Runtime, no torch)"
RUN groupadd --system --gid 10001 scoter \
    && useradd --system --uid 10001 --gid scoter --create-home --home-dir /home/scoter --shell /usr/sbin/nologin scoter \
    && mkdir -p /bundles /config \
    && chown scoter:scoter /bundles /config
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    SCOTER_HOST=0.0.0.0 \
    SCOTER_PORT=8000
VOLUME ["/bundles", "/config"]
USER 10001:10001
WORKDIR /home/scoter
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SCOTER_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["scoter", "serve"]
CMD ["--experiments", "/config/experiments.yaml"]
