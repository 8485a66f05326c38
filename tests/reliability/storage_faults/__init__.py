"""Storage that fails under a step while it writes, on real filesystems (tmpfs mounts; CI runs as root): no
simulation.

- ``test_disk_full.py``: a full volume (a real 256 KiB tmpfs, or one filled to the page): the storage helpers, the
  split snapshot, the merge publishing a version, the tiny-model builder, the validation report, the comparison.
- ``test_read_only.py``: a read-only volume (a real read-only remount): the storage helpers, the evaluators, the
  validation report, the comparison, the compiler and the local runner.

Each: a clear error naming the path and what the volume refused, no traceback, nothing half-written left behind,
and what was published before intact. Where a new case goes: the file of the fault; a step's command line runs
through :func:`.steps.run_cli` and is judged by :func:`.steps.assert_clear_failure`; the volumes are the fixtures
of ``conftest.py``.
"""
