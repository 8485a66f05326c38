"""Reliability tests: faults injected for real (bad input, full and read-only volumes, servers down or lying,
concurrent runs, SIGKILLs) and survived. Grouped by subject, one package per group:

- ``bad_input/``: hostile input, one file per entry point (validate_dataset, train, evaluate_mmlu, evaluate_task,
  merge_lora, gate, finalize_runs, tiny_model, pipelines, the config loader), plus destructive output paths. Every
  case: exit 1 or 2, the field, flag or file named, no traceback, nothing written.
- ``storage_faults/``: a full disk, a read-only volume (real tmpfs mounts; CI runs as root).
- ``server_faults/``: the MLflow server down mid-training; KFP, MLflow and OpenAI-compatible servers answering login
  pages, errors or nothing.
- ``concurrency/``: two pipeline runs on one storage root, two merges publishing one version.
- ``kills/``: the trainer, the train step and the whole local pipeline SIGKILLed, then retried.
- ``secret_leaks/``: a planted credential never printed, raised, stored in MLflow or compiled into the IR.
- ``properties/``: every property-based test (hypothesis), one file per function under test.

Where a new case goes: first by the fault it injects (the list above), then by the entry point or code it hits.
A hostile command line is one row of ``CASES`` in ``bad_input/test_<entry point>.py``; a property over generated
input, ``properties/``, whatever the function. Each package's docstring says more. Tests over a minute are marked
``reliability_long`` (``make reliability``); the rest run in ``make test``.

``tests/lora.py`` makes the real peft adapters the merge, storage-fault and concurrency cases need.
"""
