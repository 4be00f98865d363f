# The "same WebUI on GPU" image: AUTOMATIC1111 WebUI v1.10.1 (API only, on 127.0.0.1) with this extension
# installed, and the worker in front of it on port 8080 (`--engine webui`), which places each job's models in
# the WebUI's folders. The worker has a venv of its own: it cannot share the WebUI's pydantic 1.
# Everything is installed at build time; the container downloads nothing when it starts.
# Build from the repository root: docker build -f deploy/webui.Dockerfile -t sd-aws-webui .
#   --build-arg CONTROLNET_REF=<commit>   adds sd-webui-controlnet at that commit
#   --build-arg EXTENSIONS="URL[@ref] ..." adds your own WebUI extensions (git URLs)

ARG CUDA_IMAGE=nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04

FROM ${CUDA_IMAGE}
# A1111 v1.10.1 and the commits its modules/launch_utils.py names for its helper repositories.
ARG WEBUI_REPO=https://github.com/AUTOMATIC1111/stable-diffusion-webui.git
ARG WEBUI_COMMIT=82a973c04367123ae98bd9abdf80d9eda9b910e2
ARG ASSETS_COMMIT=6f7db241d2f8ba7457bac5ca9753331f0c266917
ARG STABLE_DIFFUSION_COMMIT=cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf
ARG STABLE_DIFFUSION_XL_COMMIT=45c443b316737a4ab6e40413d7794a7f5657c19f
ARG K_DIFFUSION_COMMIT=ab527a9a6d347f364e3d185ba6d714e22d80cb3c
ARG BLIP_COMMIT=48211a1594f1321b00f14c9f7a5b4813144b2fb9
# What launch_utils.py installs (torch for CUDA 12.1, CLIP and open_clip at its commits).
ARG WEBUI_TORCH="torch==2.1.2 torchvision==0.16.2"
ARG WEBUI_TORCH_INDEX=https://download.pytorch.org/whl/cu121
ARG CLIP_PACKAGE=https://github.com/openai/CLIP/archive/d50d76daa670286dd6cacf3bcd80b5e4823fc8e1.zip
ARG OPENCLIP_PACKAGE=https://github.com/mlfoundations/open_clip/archive/bb6e834e9c70d9c27d0dc3ecedeebeaeb1ffad6b.zip
ARG CONTROLNET_REPO=https://github.com/Mikubill/sd-webui-controlnet.git
ARG CONTROLNET_REF=
ARG EXTENSIONS=
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HOME=/webui/huggingface

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git python3.10 python3.10-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# clone_at REPO DIR COMMIT: the repository at that commit (what launch_utils.git_clone leaves).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN clone_at() { git clone --quiet "$1" "$2" && git -C "$2" checkout --quiet "$3"; } \
    && clone_at "${WEBUI_REPO}" /webui "${WEBUI_COMMIT}" \
    && clone_at https://github.com/AUTOMATIC1111/stable-diffusion-webui-assets.git \
        /webui/repositories/stable-diffusion-webui-assets "${ASSETS_COMMIT}" \
    && clone_at https://github.com/Stability-AI/stablediffusion.git \
        /webui/repositories/stable-diffusion-stability-ai "${STABLE_DIFFUSION_COMMIT}" \
    && clone_at https://github.com/Stability-AI/generative-models.git \
        /webui/repositories/generative-models "${STABLE_DIFFUSION_XL_COMMIT}" \
    && clone_at https://github.com/crowsonkb/k-diffusion.git /webui/repositories/k-diffusion "${K_DIFFUSION_COMMIT}" \
    && clone_at https://github.com/salesforce/BLIP.git /webui/repositories/BLIP "${BLIP_COMMIT}" \
    && if [ -n "${CONTROLNET_REF}" ]; then \
        clone_at "${CONTROLNET_REPO}" /webui/extensions/sd-webui-controlnet "${CONTROLNET_REF}"; fi \
    && for spec in ${EXTENSIONS}; do \
        url="${spec%@*}"; ref="${spec##*@}"; [ "${ref}" = "${spec}" ] && ref=HEAD; \
        name="$(basename "${url}" .git)"; clone_at "${url}" "/webui/extensions/${name}" "${ref}"; done

# The WebUI's own venv, as launch.py would prepare it, then the CLIP text encoder SD 1.x checkpoints use
# (fetched now, so nothing is fetched at start).
RUN python3.10 -m venv /webui/venv \
    && /webui/venv/bin/pip install ${WEBUI_TORCH} --extra-index-url "${WEBUI_TORCH_INDEX}" \
    && /webui/venv/bin/pip install -r /webui/requirements_versions.txt "${CLIP_PACKAGE}" "${OPENCLIP_PACKAGE}" \
    && for requirements in /webui/extensions/*/requirements.txt; do \
        if [ -f "${requirements}" ]; then /webui/venv/bin/pip install -r "${requirements}"; fi; done \
    && /webui/venv/bin/python -c "from transformers import CLIPTextModel, CLIPTokenizer; \
name = 'openai/clip-vit-large-patch14'; CLIPTokenizer.from_pretrained(name); CLIPTextModel.from_pretrained(name)"

# This extension inside the WebUI, and the worker (its HTTP server, no engine) in a venv of its own.
COPY pyproject.toml README.md install.py preload.py style.css /webui/extensions/sd-aws/
COPY scripts /webui/extensions/sd-aws/scripts
COPY javascript /webui/extensions/sd-aws/javascript
COPY aws_extension /webui/extensions/sd-aws/aws_extension
WORKDIR /webui
RUN python3.10 -m venv /opt/sd-aws \
    && /opt/sd-aws/bin/pip install "/webui/extensions/sd-aws[middleware]" \
    && PYTHONPATH=/webui /webui/venv/bin/python extensions/sd-aws/install.py \
    && useradd --create-home --uid 1000 sdaws \
    && mkdir -p /opt/ml/model \
    && chown -R sdaws /webui /opt/ml

COPY deploy/serve-webui /usr/local/bin/serve
COPY deploy/train /usr/local/bin/train
ENV PATH=/opt/sd-aws/bin:$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SD_AWS_SAGEMAKER_ROOT=/opt/ml
USER 1000
EXPOSE 8080
ENTRYPOINT []
CMD ["serve"]
