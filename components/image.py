"""The image every component is declared with (the pipeline swaps in ``cluster.image`` at compile time)."""

from configs.schema import DEFAULT_IMAGE

__all__ = ["DEFAULT_IMAGE"]
