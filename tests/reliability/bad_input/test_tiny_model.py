"""Bad input of the tiny-model builder (``components.demo.tiny_model``): refused before it writes."""

from __future__ import annotations

import pytest

from .refusals import assert_refused, case_ids


def _tiny(*args: str, output: str = "{ws}/out/tiny") -> list[str]:
    return ["components.demo.tiny_model", "--output", output, *args]


# (case id, argv after `python -m`, words the message must contain, extra environment)
CASES = [
    ("tiny-model-negative-size", _tiny("--hidden-size", "-8"), ["hidden"], {}),
    ("tiny-output-exists", _tiny(output="{ws}/out/existing"), ["{ws}/out/existing"], {}),
    ("tiny-huge-vocab", _tiny("--vocab-size", "100000000000"), ["--vocab-size"], {}),
    ("tiny-bad-shard-size", _tiny("--shard-size", "abc"), ["--shard-size"], {}),
    ("tiny-zero-layers", _tiny("--layers", "0"), ["--layers"], {}),
]


@pytest.mark.parametrize(("argv", "words", "extra_env"), [case[1:] for case in CASES], ids=case_ids(CASES))
def test_hostile_input_is_refused_clearly_and_writes_nothing(ws, argv, words, extra_env):
    assert_refused(ws, argv, words, extra_env)
