"""The suite's guard (conftest): a deprecated argument in memlong's own calls fails the test."""

import pytest
import torch

from conftest import tiny_model


def test_deprecated_argument_from_a_memlong_frame_fails_but_not_from_a_test():
    model, _ = tiny_model("llama")
    ids = torch.zeros(1, 3, dtype=torch.long)
    # a function of a (stand-in) memlong module calling the stock model with the old cache name
    scope = {"__name__": "memlong.stand_in"}
    exec(compile("def call(model, ids):\n    return model(ids, past_key_values=None)\n", "stand_in.py", "exec"), scope)
    from memlong.modeling import CACHE_ARG

    if CACHE_ARG == "past_key_values":
        pytest.skip("this transformers release has not deprecated past_key_values yet")
    with pytest.raises(FutureWarning, match="memlong.stand_in"):
        scope["call"](model, ids)
    with pytest.warns(FutureWarning):  # the same call from test code only warns
        model(ids, past_key_values=None)
