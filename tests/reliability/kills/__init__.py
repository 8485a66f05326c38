"""Processes SIGKILLed where it hurts, then retried as KFP retries them (``make reliability``: real training).

- ``test_train_kills.py``: the trainer killed from outside once a checkpoint is complete, or from inside in the
  middle of writing a file; the retry must give the run that was never killed.
- ``test_run_local_kill.py``: the whole local pipeline's process group killed during training, then run again.
- ``test_run_local_interrupt.py``: Ctrl-C (SIGINT to the process group) during a local run: one line, runs KILLED.
- ``processes.py``: not tests; the processes of a local run, found by its storage root.
- ``kill_while_writing/``: not tests. A ``sitecustomize`` that a test puts on the killed process's ``PYTHONPATH``
  (with ``LLMFT_KILL_WHILE_WRITING`` set to a pattern): the process SIGKILLs itself half-way through writing the
  first matching file. It is no package: Python imports it at start-up as the top-level ``sitecustomize``.

Where a new case goes: a kill of the train step (its trainer, or the step publishing), ``test_train_kills.py``; a
kill of a whole pipeline run, ``test_run_local_kill.py``.
"""
