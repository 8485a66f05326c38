"""Things started at the same moment that share storage or a tracking store: two local pipeline runs on one empty
storage root and one MLflow store (``test_concurrent_runs.py``, ``make reliability``), two merges publishing one
version name (``test_concurrent_merges.py``). Each checks that both finish or one refuses by name, and that what is
published is whole and belongs to one of them.
"""
