"""No planted credential is printed, raised, logged, stored in MLflow or compiled into the IR.

A group of its own rather than part of ``bad_input/``: the property checked is not "refused clearly" but "the secret
appears nowhere", and the input is often legitimate (a token in the environment, a password the operator meant to
pass) while the leak comes from a server's answer, an error text stored as an MLflow tag, or the compiled pipeline.
Where a new case goes: any path a secret could take out of the process, in ``test_secrets.py``, checked with
``_no_secret``. The redaction function's properties (hypothesis) are in ``properties/test_redaction.py``.
"""
