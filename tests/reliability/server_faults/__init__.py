"""Servers that fail under a step: the tracking server (MLflow) going down in the middle of training and coming back
(``test_tracking_outage.py``: a real ``mlflow server`` stopped and restarted; no metric point may be lost), and
servers that answer the wrong thing or nothing (``test_misbehaving_servers.py``: a KFP API behind a login page, a
500 page, ``{}`` without an id, a hang; an MLflow behind a proxy; an OpenAI-compatible endpoint answering HTML or
echoing the key): a clear failure, exit 1, in bounded time, never a reported success.

Where a new case goes: a server that is down or restarted, ``test_tracking_outage.py``; a server that answers
wrongly or hangs, ``test_misbehaving_servers.py`` (KFP through ``tests/fake_kfp_server.py``, MLflow and vLLM
through ``StandIn``).
"""
