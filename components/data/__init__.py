"""The validate-dataset step: every row checked as LLaMA-Factory reads it, the held-out rows split off.

- :mod:`.validate_dataset`: the step (``run_step``) and its command line;
- :mod:`.validation`: :func:`~.validation.validate_datasets`, one streaming pass per file;
- :mod:`.checks`: describe a ``dataset_info.json`` entry as LLaMA-Factory does, check one row;
- :mod:`.reader`: stream a file's rows (JSON, JSON Lines, CSV, Parquet) in constant memory;
- :mod:`.column_types`: one Arrow type per field, as the ``datasets`` loader needs;
- :mod:`.contamination`: MMLU test questions in the training text;
- :mod:`.row_keys`: what the trainer sees of a row, the example it is a copy of, and its key;
- :mod:`.leakage`: held-out rows whose answer the train side also holds;
- :mod:`.result`: what validation found, and its Markdown report;
- :mod:`.split`: the held-out split by content hash and its manifest (``split.json``);
- :mod:`.split_writer`: the split snapshot, written in the validation pass.
"""

__all__ = [
    "checks",
    "column_types",
    "contamination",
    "leakage",
    "reader",
    "result",
    "row_keys",
    "split",
    "split_writer",
    "validate_dataset",
    "validation",
]
