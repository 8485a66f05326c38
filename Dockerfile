# syntax=docker/dockerfile:1
# One image for every task of the pipeline (and the LLaMA-Factory WebUI).
#   make image                       # docker or podman; the tag follows setup.cfg's version
#   docker build -t ghcr.io/llm-finetune-pipelines/llm-finetune:0.3.0 .
#   make image-smoke IMAGE=ghcr.io/llm-finetune-pipelines/llm-finetune:0.3.0   # image/smoke.sh
# Versions are pinned in setup.cfg (extras train + gpu); this file installs exactly those.
#
# The base is plain Ubuntu: CUDA comes once, from torch's wheels (the nvidia-* packages pinned by torch 2.9.1:
# CUDA 12.8 runtime, cuDNN 9, NCCL, cuBLAS...), and the driver from the node (the NVIDIA container toolkit
# mounts it). A CUDA base image would bring the same libraries a second time.
ARG BASE_IMAGE=ubuntu:24.04

# ---- build: the virtual environment, with the package and its pinned extras ----
FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first, from setup.cfg alone: this layer is rebuilt only when the pins change. The pip cache is a
# build cache (never in a layer); every pinned package is a wheel or, like deepspeed, builds without a compiler.
# Behind a TLS-inspecting proxy, pass its CA bundle as the secret pip_ca (make image does when PIP_CERT is set):
# pip uses it during the build only, nothing of it stays in the image.
COPY setup.cfg ./
RUN python3 -c 'import configparser; cfg = configparser.ConfigParser(); cfg.read("setup.cfg"); \
extras = cfg["options.extras_require"]; print(cfg["options"]["install_requires"], extras["train"], extras["gpu"], sep="\n")' \
    > requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && pip install --upgrade pip \
 && pip install -r requirements.txt
# Then the package itself, as a wheel the image installs on top of the venv: a source change rebuilds and
# ships a layer of a few hundred kB, not the venv's 9 GB.
COPY pyproject.toml README.md ./
COPY configs/ configs/
COPY components/ components/
COPY pipelines/ pipelines/
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && pip wheel --no-deps --wheel-dir /opt/wheel .

# ---- the image: the base, Python, the venv, a non-root user ----
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/tmp/hf-home \
    HF_HUB_OFFLINE=1 \
    DISABLE_VERSION_CHECK=1 \
    GIT_PYTHON_REFRESH=quiet \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# Non-root, uid/gid 1000: the runAsUser and fsGroup of deploy/. The base may already hold uid or gid 1000
# (ubuntu:24.04 ships the user `ubuntu`): whoever holds them gives them up, so this works on any base.
# /storage (the volume's mount point) and the home, the default working directory, belong to the user:
# `python -m pipelines.run_local` writes ./storage; the WebUI reads ./data and writes ./saves, ./llamaboard_cache.
# /gcs, /minio and /s3 are where the KFP launcher puts artifacts (KFP < 2.3 mounts no emptyDir there).
ARG USER_NAME=llmft
RUN user=$(getent passwd 1000 | cut -d: -f1) \
 && if [ -n "$user" ]; then userdel --remove "$user" 2>/dev/null || userdel "$user"; fi \
 && group=$(getent group 1000 | cut -d: -f1) \
 && if [ -n "$group" ]; then groupdel "$group"; fi \
 && groupadd --gid 1000 "$USER_NAME" \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir "/home/$USER_NAME" --shell /bin/bash "$USER_NAME" \
 && install -d -o 1000 -g 1000 /storage /gcs /minio /s3
COPY --from=build /opt/venv /opt/venv
# The package (not editable: the image needs no source tree); pip check: its requirements and the pins agree.
# COPY, not a bind mount: a changed wheel must invalidate the next step in every builder's cache.
COPY --from=build /opt/wheel /tmp/wheel
RUN pip install --no-deps --no-index /tmp/wheel/*.whl \
 && rm -rf /tmp/wheel \
 && pip check \
 && python -c "import kfp, llamafactory, mlflow, peft, transformers, gradio, pipelines.compile; print('venv ok')"
USER 1000:1000
WORKDIR /home/${USER_NAME}
# NCCL needs a large /dev/shm: the pipeline mounts an in-memory emptyDir there (see README).
EXPOSE 7860
CMD ["python", "-m", "pipelines.compile", "--help"]
