"""Demo and test tooling: a tiny model built locally, and the sample data.

- :mod:`.tiny_model`: a tiny random Llama and its tokenizer, built deterministically (nothing is downloaded);
- :mod:`.samples`: the sample datasets and MMLU subjects (``sample_data/``, ``sample_mmlu/``).
"""

__all__ = [
    "samples",
    "tiny_model",
]
