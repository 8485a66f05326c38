"""Bad input of the train step's command line (``components.train.train``) and of the multinode launcher
(``components.train.multinode.launch``): refused before anything trains.

Config errors only: nothing may start training (``_train`` adds ``--render-only`` as a second guard). The launcher
reads the Training Operator's variables from its environment; hostile ones are each case's extra environment.
"""

from __future__ import annotations

import pytest

from .refusals import assert_refused, case_ids


def _train(*sets: str, config: str = "local") -> list[str]:
    overrides = [item for value in sets for item in ("--set", value)]
    return ["components.train.train", "--config", config, *overrides, "--render-only"]


def _launch(config: str) -> list[str]:
    return ["components.train.multinode.launch", "--gpus-per-node", "1", config, "--dry-run"]


OPERATOR = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "trainer-0", "MASTER_PORT": "23456"}

# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    ("train-malformed-yaml", ["components.train.train", "--config", "{ws}/malformed.yaml"], ["malformed.yaml", "YAML"],
     {}),
    ("train-non-utf8-yaml", ["components.train.train", "--config", "{ws}/latin1.yaml"], ["latin1.yaml", "UTF-8"], {}),
    ("train-negative-lr", ["components.train.train", "--config", "local", "--set", "training.learning_rate=-1"],
     ["training.learning_rate"], {}),
    ("train-zero-rank", ["components.train.train", "--config", "local", "--set", "training.lora_rank=0"],
     ["training.lora_rank"], {}),
    ("train-huge-batch", ["components.train.train", "--config", "local", "--set",
                          "training.per_device_train_batch_size=1000000000000"],
     ["training.per_device_train_batch_size"], {}),
    ("train-unknown-template", ["components.train.train", "--config", "local", "--set", "training.template=nope"],
     ["training.template"], {}),
    ("train-dataset-dotdot", ["components.train.train", "--config", "local", "--set", "dataset.names=[../x]"],
     ["dataset.names"], {}),
    ("train-absolute-model", ["components.train.train", "--config", "local", "--set", "storage.base_model=/etc"],
     ["storage.base_model"], {}),
    ("train-unknown-key", ["components.train.train", "--config", "local", "--set", "training.lernin_rate=1"],
     ["training.lernin_rate"], {}),
    ("train-config-is-a-list", _train(config="{ws}/list.yaml"), ["list.yaml", "mapping"], {}),
    ("train-config-is-a-directory", _train(config="{ws}/adir"), ["{ws}/adir"], {}),
    ("train-config-missing", _train(config="{ws}/nope.yaml"), ["nope.yaml"], {}),
    ("train-unknown-preset", _train(config="nopreset"), ["nopreset"], {}),
    ("train-infinite-lr-in-file", _train(config="{ws}/huge.yaml"), ["huge.yaml", "training.learning_rate"], {}),
    ("train-nan-lr", _train("training.learning_rate=nan"), ["training.learning_rate"], {}),
    ("train-non-numeric-lr", _train("training.learning_rate=abc"), ["training.learning_rate"], {}),
    ("train-infinite-epochs", _train("training.num_train_epochs=1e999"), ["training.num_train_epochs"], {}),
    ("train-zero-save-steps", _train("training.save_steps=0"), ["training.save_steps"], {}),
    ("train-override-without-value", _train("training.learning_rate"), ["training.learning_rate"], {}),
    ("train-data-dir-escape", _train("storage.data_dir=../../etc"), ["storage.data_dir"], {}),
    # the multinode launcher: the Training Operator's variables missing or hostile
    ("launch-without-operator-env", _launch("{ws}/t.yaml"), ["WORLD_SIZE"], {}),
    ("launch-world-size-not-a-number", _launch("{ws}/train.yaml"), ["WORLD_SIZE", "abc"],
     {**OPERATOR, "WORLD_SIZE": "abc"}),
    ("launch-rank-beyond-world-size", _launch("{ws}/train.yaml"), ["RANK=5"], {**OPERATOR, "RANK": "5"}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)
