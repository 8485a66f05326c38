"""The one image every task runs in (built from the Dockerfile; pins match setup.cfg)."""

DEFAULT_IMAGE = "ghcr.io/llm-finetune-pipelines/llm-finetune:0.1.0"
