"""Bad input, one file per entry point: each must refuse it clearly (exit 1 or 2, the field, flag or file named,
no traceback) and write nothing.

- ``test_validate_dataset.py``: ``components.data.validate_dataset`` and the validator under it (hostile datasets
  checked against LLaMA-Factory's own loader).
- ``test_train.py``: ``components.train.train`` and the multinode launcher ``components.train.multinode.launch``.
- ``test_evaluate_mmlu.py``: ``components.evaluate.mmlu.evaluate_mmlu`` (MMLU data, the OpenAI-compatible backend).
- ``test_evaluate_task.py``: ``components.evaluate.task.evaluate_task`` (the held-out loss).
- ``test_merge_lora.py``: ``components.merge.merge_lora`` (hostile adapters and bases).
- ``test_gate.py``: the gate, ``components.gate.compare`` and ``components.gate.register_model``.
- ``test_finalize_runs.py``: the exit handler ``components.run.finalize_runs``.
- ``test_tiny_model.py``: the tiny-model builder ``components.demo.tiny_model``.
- ``test_pipelines.py``: ``pipelines.compile``, ``pipelines.submit`` (schedules included) and ``pipelines.run_local``.
- ``test_config.py``: the config loader every entry point goes through (``configs.schema``): hostile config files.
- ``test_output_paths.py``: output paths that would overwrite an input or a published model. They are bad input of
  every writer at once, refused by one guard (``components.common.storage.guard_output``); the cases stay in one
  table, over one workspace holding a published version, so that a writer without the guard shows up there.
- ``test_entry_points.py``: every entry point has its cases, and every case name is distinct.

Where a new case goes: a hostile command line is one row of ``CASES`` in its entry point's file (argv after
``python -m``, ``{ws}`` for the workspace; the words the message must hold; extra environment), judged by
:func:`.refusals.assert_refused` against the session's workspace (``conftest.py``: add a hostile input file
there). A case that needs its own files or calls the code in-process is a test function in the same file.
A property over generated input (hypothesis) goes to ``properties/``; a planted credential that must not leak
goes to ``secret_leaks/``.
"""
