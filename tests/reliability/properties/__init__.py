"""Property-based tests (hypothesis): generated input against a contract, one file per function under test.

- ``test_dataset_validator.py``: ``components.data.validation.validate_datasets`` (alpaca and sharegpt rows,
  non-objects, garbage lines, arbitrary bytes).
- ``test_config_loader.py``: ``configs.schema`` (any mapping, any override text, booleans, control characters,
  node labels, memory quantities, derived names).
- ``test_cron_schedule.py``: ``pipelines.schedule.validate_cron``.
- ``test_redaction.py``: ``configs.redaction`` (named secrets, URI user info).

Every hypothesis test of the reliability suite lives here, next to the others of its function, even when the
literal cases of the same function are elsewhere (``bad_input/``, ``secret_leaks/``): each file's docstring points
at them. Where a new property goes: the file of the function it generates input for, or a new
``test_<function>.py``.
"""
