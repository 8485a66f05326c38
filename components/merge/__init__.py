"""The merge-lora step: the adapter merged into its base shard by shard, published atomically for vLLM.

- :mod:`.merge_lora`: the recipe (``merge_model``, ``run_step``) and its command line;
- :mod:`.inputs`: reading configs, headers and tensors as errors that name the file;
- :mod:`.safetensors`: the safetensors format, checked without loading tensors;
- :mod:`.adapter`: a peft LoRA adapter as updates to base weights;
- :mod:`.plan`: every output tensor and shard, checked before writing;
- :mod:`.write`: the merged tensors, written and hashed as peft would compute them;
- :mod:`.verify`: the checksum manifest and the check of a model directory;
- :mod:`.publish`: versions, the atomic publish and the ``current`` pointer.
"""

__all__ = [
    "adapter",
    "inputs",
    "merge_lora",
    "plan",
    "publish",
    "safetensors",
    "verify",
    "write",
]
