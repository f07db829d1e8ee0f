"""rnnkit's layers against torch.nn over a grid of every argument and input form.

Outputs, final states and the gradients with respect to the input, the initial
state and every parameter must equal torch.nn's: to 1e-5 in float32 and 1e-10
in float64.
"""

import itertools

import pytest
import torch

from parity import compare_with_torch

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
FORMS = ["padded", "unbatched", "packed_sorted", "packed_unsorted"]


def grid():
    for kind, layers, bidirectional, batch_first, bias, form in itertools.product(
        KINDS, [1, 2, 3], [False, True], [False, True], [True, False], FORMS
    ):
        projections = [0, 3] if kind == "lstm" else [0]
        for proj_size in projections:
            yield kind, layers, bidirectional, batch_first, bias, proj_size, form


def case_id(case):
    kind, layers, bidirectional, batch_first, bias, proj_size, form = case
    parts = [kind, f"L{layers}", "bi" if bidirectional else "uni"]
    parts += ["bf" if batch_first else "tf", "bias" if bias else "nobias"]
    parts += [f"proj{proj_size}", form]
    return "-".join(parts)


CASES = list(grid())


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_layer_matches_torch_float32(case, training, with_state):
    kind, layers, bidirectional, batch_first, bias, proj_size, form = case
    options = dict(
        input_size=4, hidden_size=6, num_layers=layers, bias=bias,
        batch_first=batch_first, bidirectional=bidirectional,
    )  # fmt: skip
    if proj_size:
        options["proj_size"] = proj_size
    compare_with_torch(kind, torch.float32, form, with_state, training, **options)


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", CASES[::3], ids=[case_id(c) for c in CASES[::3]])
def test_layer_matches_torch_float64(case, training, with_state):
    kind, layers, bidirectional, batch_first, bias, proj_size, form = case
    options = dict(
        input_size=4, hidden_size=6, num_layers=layers, bias=bias,
        batch_first=batch_first, bidirectional=bidirectional,
    )  # fmt: skip
    if proj_size:
        options["proj_size"] = proj_size
    compare_with_torch(kind, torch.float64, form, with_state, training, **options)
