"""Multi-node training: a Kubeflow TrainJob or PyTorchJob whose nodes run the train step's worker.

- :mod:`.training_job`: submit, follow and delete the job (what the train step and the exit handler call);
- :mod:`.engine`: what the engines share: the Kubernetes API and the job object;
- :mod:`.pods`: node 0's log in the step's log, why it waits, which node failed;
- :mod:`.job_spec`: what every node gets (command, image, env, resources, volumes, scheduling);
- :mod:`.trainjob`: the Kubeflow Trainer v2 engine (the default);
- :mod:`.pytorchjob`: the Training Operator v1 engine;
- :mod:`.launch`: what each node runs: the engine's variables mapped to torchrun;
- :mod:`.torchrun`: how the trainer worker starts under torchrun (shared with the single-node launcher).
"""

__all__ = [
    "engine",
    "job_spec",
    "launch",
    "pods",
    "pytorchjob",
    "torchrun",
    "training_job",
    "trainjob",
]
