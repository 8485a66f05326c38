"""The sample data shipped for the demo and the tests: an alpaca and a sharegpt dataset, a few MMLU subjects.

``sample_data/`` is a LLaMA-Factory data directory (``dataset_info.json`` plus the files); ``sample_mmlu/``
is MMLU in the hendrycks CSV layout (``dev/`` and ``test/``). ``python -m pipelines.run_local`` copies both
onto the local storage root, next to the tiny model :mod:`components.demo.tiny_model` builds.
"""

from pathlib import Path

SAMPLES = Path(__file__).resolve().parent
SAMPLE_DATA = SAMPLES / "sample_data"
SAMPLE_MMLU = SAMPLES / "sample_mmlu"
