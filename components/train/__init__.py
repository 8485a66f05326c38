"""The train step: LLaMA-Factory fine-tuning, tracked, resumable, on one node or many.

- :mod:`.train`: the recipe (``run_step``, :class:`~.train.TrainRecipe`) and its command line;
- :mod:`.inputs`: the run's paths and the verified split snapshot it trains on;
- :mod:`.render`: the LLaMA-Factory YAML, from the typed config;
- :mod:`.checkpoints`: which checkpoint a retry resumes from;
- :mod:`.fingerprint`: what defines a training, so that only the same one resumes;
- :mod:`.launch`: the trainer process on this node (one process or torchrun);
- :mod:`.worker`: the trainer process itself (LLaMA-Factory's ``run_exp``);
- :mod:`.metrics`: the train run's metrics: the trainer's callback, collect, backfill, plot;
- :mod:`.outputs`: the published weights, ``train_summary.json`` and ``model.json``;
- :mod:`.trials`: a sweep's trials: their settings, directories and names;
- :mod:`.tokenized`: the tokenized data, built once per run and shared by its trials;
- :mod:`.select_trial`: the select-trial step: the sweep's winner on the validation rows;
- :mod:`.multinode`: a TrainJob or PyTorchJob when ``cluster.nodes > 1``.
"""

__all__ = [
    "checkpoints",
    "fingerprint",
    "inputs",
    "launch",
    "metrics",
    "multinode",
    "outputs",
    "render",
    "select_trial",
    "tokenized",
    "train",
    "trials",
    "worker",
]
