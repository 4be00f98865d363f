# The inference (and, with the trainer, training) image: the worker with its built-in diffusers engine on CUDA.
# SageMaker runs `docker run IMAGE serve`; `serve` is `sd-aws sagemaker serve` (port 8080, /opt/ml).
# Build from the repository root: docker build -f deploy/worker.Dockerfile -t sd-aws-worker .
# Versions: CUDA 12.8 with the torch that pyproject.toml pins (tests/test_images.py checks they agree).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/sd-aws \
    && /opt/sd-aws/bin/pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY aws_extension /src/aws_extension
RUN /opt/sd-aws/bin/pip install "/src[worker]"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive PATH=/opt/sd-aws/bin:$PATH PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SD_AWS_SAGEMAKER_ROOT=/opt/ml
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 sdaws \
    && mkdir -p /opt/ml/model \
    && chown -R sdaws /opt/ml
COPY --from=build /opt/sd-aws /opt/sd-aws
COPY deploy/serve /usr/local/bin/serve
COPY deploy/train /usr/local/bin/train
USER 1000
EXPOSE 8080
ENTRYPOINT []
CMD ["serve"]
