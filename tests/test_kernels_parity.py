"""The torch.nn parity grid with the fused backend forced on.

The default backend (auto) already takes the fused path where it can, but
falls back to the reference path if the kernels cannot be built; forcing
``fused`` here makes a build failure fail these tests instead. A quarter of the
grid runs, each case with one of the four combinations of training mode and
initial state, to keep time in check; every cell kind, layer count,
direction, bias, projection and input form still appears.
"""

import pytest
import torch

import rnnkit
from parity import compare_with_torch
from test_layers_parity import CASES, case_id

SUBSET = CASES[::4]


@pytest.fixture(autouse=True)
def fused_backend():
    with rnnkit.use_backend("fused"):
        yield


@pytest.mark.parametrize("index", range(len(SUBSET)), ids=[case_id(c) for c in SUBSET])
def test_fused_layer_matches_torch_float32(index):
    kind, layers, bidirectional, batch_first, bias, proj_size, form = SUBSET[index]
    training, with_state = index % 2 == 0, index // 2 % 2 == 0
    options = dict(
        input_size=4, hidden_size=6, num_layers=layers, bias=bias,
        batch_first=batch_first, bidirectional=bidirectional,
    )  # fmt: skip
    if proj_size:
        options["proj_size"] = proj_size
    compare_with_torch(kind, torch.float32, form, with_state, training, **options)


@pytest.mark.parametrize("case", SUBSET[1::6], ids=[case_id(c) for c in SUBSET[1::6]])
def test_fused_layer_matches_torch_float64(case):
    kind, layers, bidirectional, batch_first, bias, proj_size, form = case
    options = dict(
        input_size=4, hidden_size=6, num_layers=layers, bias=bias,
        batch_first=batch_first, bidirectional=bidirectional,
    )  # fmt: skip
    if proj_size:
        options["proj_size"] = proj_size
    compare_with_torch(kind, torch.float64, form, True, True, **options)
