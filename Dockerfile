# One image for every task of the pipeline (and the LLaMA-Factory WebUI).
#   docker build -t ghcr.io/llm-finetune-pipelines/llm-finetune:0.2.0 .
# Versions are pinned in setup.cfg (extras train + gpu); this file installs exactly those.
# CUDA 12.8 runtime + cuDNN: matches the CUDA build of torch 2.9.1 pinned in setup.cfg.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/tmp/hf-home \
    HF_HUB_OFFLINE=1 \
    DISABLE_VERSION_CHECK=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first (cached layer), then the project itself.
COPY setup.cfg pyproject.toml README.md ./
COPY configs/ configs/
COPY components/ components/
COPY pipelines/ pipelines/
RUN pip install --upgrade pip \
 && pip install ".[train,gpu]" \
 && python -c "import kfp, llamafactory, mlflow, peft, transformers; print('image ok')"

# Non-root: the pipeline never needs root; uid 1000 matches the fsGroup in deploy/.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin llmft \
 && mkdir -p /storage && chown llmft:llmft /storage
USER 1000:1000
# NCCL needs a large /dev/shm: the pipeline mounts an in-memory emptyDir there (see README).
EXPOSE 7860
CMD ["python", "-m", "pipelines.compile", "--help"]
