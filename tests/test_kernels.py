"""The fused kernels against the reference path, and the choice between them.

The oracle is rnnkit's step-by-step reference path: the same layer, weights
and input run once with each backend must give the same outputs, final
states and gradients (1e-5 in float32, 1e-10 in float64).
"""

from __future__ import annotations

import copy
import csv
import logging
import multiprocessing
import queue
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
from rnnkit import kernels
from rnnkit.kernels import backend, fused, reference

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
LAYERS = {"RNN": rnnkit.RNN, "GRU": rnnkit.GRU, "LSTM": rnnkit.LSTM}


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    # On a clean machine the first load compiles fused.cpp (under a minute).
    fused.load()


def run_layer(layer, value, hx, lengths=None, weight_seed=3):
    """Return the outputs, final states and gradients of every leaf, in order."""
    if lengths is None:
        output, state = layer(value, hx)
    else:
        output, state = layer(value, hx, lengths=lengths)
    states = state if isinstance(state, tuple) else (state,)
    data = output.data if isinstance(output, PackedSequence) else output

    # The loss weights are drawn in float64 whatever the dtype, so that a
    # float32 run and a float64 run of one layer share them.
    generator = torch.Generator().manual_seed(weight_seed)

    def draw(shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    loss = (data * draw(data.shape).to(data.dtype)).sum()
    for s in states:
        loss = loss + (s * draw(s.shape).to(s.dtype)).sum()
    leaves = [value.data if isinstance(value, PackedSequence) else value]
    if hx is not None:
        leaves += list(hx) if isinstance(hx, tuple) else [hx]
    leaves += [p for _, p in sorted(layer.named_parameters())]
    leaves = [leaf for leaf in leaves if leaf.requires_grad]
    gradients = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [data, *states, *gradients]


def assert_backends_agree(layer, make_input, dtype, lengths=None):
    results = {}
    for name in ("reference", "fused"):
        value, hx = make_input()
        with rnnkit.use_backend(name):
            results[name] = run_layer(layer, value, hx, lengths)
    tolerance = TOLERANCE[dtype]
    expected, actual = results["reference"], results["fused"]
    assert len(actual) == len(expected)
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        # An input that no step reads has gradient None on one path and zeros
        # on the other; both mean zero.
        if want is None or got is None:
            other = got if want is None else want
            assert other is None or not other.any(), f"tensor {index}"
            continue
        assert got.shape == want.shape, f"tensor {index}: {got.shape} != {want.shape}"
        torch.testing.assert_close(
            got,
            want,
            rtol=tolerance,
            atol=tolerance,
            msg=lambda m, i=index: f"{i}: {m}",
        )


# A random grid of configurations, one test each.


def random_config(seed: int) -> dict:
    rng = random.Random(seed)
    cell = rng.choice(["RNN", "RNN_RELU", "GRU", "LSTM"])
    hidden = rng.choice([1, 3, 5, 7, 9, 17])
    config = {
        "cell": cell,
        "dtype": rng.choice([torch.float32, torch.float64]),
        "steps": rng.choice([1, 1, 2, 3, 5, 7]),
        "batch": rng.choice([1, 1, 2, 3, 4]),
        "input_size": rng.choice([1, 2, 5]),
        "hidden_size": hidden,
        "num_layers": rng.choice([1, 1, 2, 3]),
        "bidirectional": rng.random() < 0.4,
        "bias": rng.random() < 0.8,
        "batch_first": rng.random() < 0.3,
        "proj_size": rng.randrange(1, hidden) if cell == "LSTM" and hidden > 1 else 0,
        "with_state": rng.random() < 0.5,
        "form": rng.choice(["padded", "unbatched", "packed", "lengths"]),
        "training": rng.random() < 0.7,
        "seed": seed,
    }
    if rng.random() < 0.5:
        config["proj_size"] = 0
    return config


def config_id(seed: int) -> str:
    c = random_config(seed)
    return (
        f"{seed}-{c['cell']}-{str(c['dtype'])[6:]}-T{c['steps']}-B{c['batch']}-"
        f"H{c['hidden_size']}-L{c['num_layers']}-D{2 if c['bidirectional'] else 1}-"
        f"P{c['proj_size']}-{c['form']}"
    )


SEEDS = list(range(520))


@pytest.mark.parametrize("seed", SEEDS, ids=[config_id(s) for s in SEEDS])
def test_fused_matches_reference_random_config(seed):
    c = random_config(seed)
    dtype, steps, batch = c["dtype"], c["steps"], c["batch"]
    options = {"num_layers": c["num_layers"], "bias": c["bias"]}
    options.update(batch_first=c["batch_first"], bidirectional=c["bidirectional"])
    if c["cell"] == "RNN_RELU":
        options["nonlinearity"] = "relu"
    if c["proj_size"]:
        options["proj_size"] = c["proj_size"]
    torch.manual_seed(seed)
    layer_type = LAYERS["RNN" if c["cell"] == "RNN_RELU" else c["cell"]]
    layer = layer_type(c["input_size"], c["hidden_size"], dtype=dtype, **options)
    layer.train(c["training"])

    form = c["form"]
    generator = torch.Generator().manual_seed(seed)
    lengths = None
    if form == "lengths":
        # At least one row of zero length whenever the batch has two rows.
        lengths = torch.randint(0, steps + 1, (batch,), generator=generator)
        lengths[0] = steps
        if batch > 1:
            lengths[-1] = 0
    if form == "packed":
        packed_lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
        packed_lengths[-1] = steps
    x_shape = (
        (steps, c["input_size"])
        if form == "unbatched"
        else (steps, batch, c["input_size"])
    )
    if c["batch_first"] and form != "unbatched":
        x_shape = (batch, steps, c["input_size"])
    x_values = torch.randn(x_shape, generator=generator, dtype=dtype)

    directions = 2 if c["bidirectional"] else 1
    out_size = c["proj_size"] or c["hidden_size"]
    state_rows = c["num_layers"] * directions
    h_values = torch.randn(
        state_rows, batch, out_size, generator=generator, dtype=dtype
    )
    c_values = torch.randn(
        state_rows, batch, c["hidden_size"], generator=generator, dtype=dtype
    )

    def make_input():
        x = x_values.clone().requires_grad_(True)
        value = x
        if form == "packed":
            value = pack_padded_sequence(
                x, packed_lengths, batch_first=c["batch_first"], enforce_sorted=False
            )
        if not c["with_state"]:
            return value, None
        h0 = h_values.clone()
        c0 = c_values.clone()
        if form == "unbatched":
            h0, c0 = h0[:, 0], c0[:, 0]
        h0.requires_grad_(True)
        c0.requires_grad_(True)
        return value, ((h0, c0) if c["cell"] == "LSTM" else h0)

    assert_backends_agree(layer, make_input, dtype, lengths)


# Inputs the grid may not reach.


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_fused_all_lengths_zero(cell):
    torch.manual_seed(0)
    layer = LAYERS[cell](3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)

    def make_input():
        torch.manual_seed(1)
        x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
        if cell == "LSTM":
            return x, (
                h0,
                torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True),
            )
        return x, h0

    assert_backends_agree(
        layer, make_input, torch.float64, lengths=torch.zeros(3, dtype=torch.int64)
    )


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_fused_large_sizes_float64(cell):
    # Each step's product (48 x 300 x 300 and more) runs on a team of threads,
    # and the weight gradients are past the size at which the hand-written
    # GEMM splits its columns across threads.
    torch.manual_seed(0)
    layer = LAYERS[cell](200, 300, bidirectional=True, dtype=torch.float64)

    def make_input():
        torch.manual_seed(1)
        x = torch.randn(3, 48, 200, dtype=torch.float64, requires_grad=True)
        return x, None

    assert_backends_agree(layer, make_input, torch.float64)


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_fused_float32_large_near_float64(cell):
    # At this size float32 rounding is the limit. Sums of 300 to 1200 products
    # a step put the reference path up to 1.1e-5 away from the same layer in
    # float64 (measured on four weight draws). Two float32 paths that add in
    # different orders therefore need not agree to 1e-5, so both must be
    # within 2e-5 of the float64 result instead.
    torch.manual_seed(0)
    layer = LAYERS[cell](200, 300, bidirectional=True)
    exact = copy.deepcopy(layer).double()
    torch.manual_seed(1)
    x = torch.randn(3, 48, 200)

    def make_input(dtype):
        return lambda: (x.to(dtype).requires_grad_(True), None)

    with rnnkit.use_backend("reference"):
        value, hx = make_input(torch.float64)()
        truth = run_layer(exact, value, hx)
    for name in ("fused", "reference"):
        value, hx = make_input(torch.float32)()
        with rnnkit.use_backend(name):
            got = run_layer(layer, value, hx)
        for index, (want, have) in enumerate(zip(truth, got, strict=True)):
            torch.testing.assert_close(
                have.double(),
                want,
                rtol=2e-5,
                atol=2e-5,
                msg=lambda m, i=index, path=name: f"{path} {i}: {m}",
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("batch", [12, 24])
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM", "LSTM-projected"])
def test_fused_team_matches(cell, batch, threads, dtype):
    # 12 or 24 rows x 40 units is past the size (16K multiply-adds a step) at
    # which a sequence runs on a team of threads. With 12 rows, each thread
    # owns a slice of the units, and 40 units split unevenly at the vector
    # width. With 24 rows, each owns a share of the batch, unless there is a
    # projection. With
    # lengths, rows drop out (forward) and join from h0 (reverse) while the
    # team runs, the shares of the batch differ in size, and a row of length
    # 0 keeps its initial state.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        options = {"proj_size": 24} if cell == "LSTM-projected" else {}
        kind = cell.split("-")[0]
        layer = LAYERS[kind](8, 40, bidirectional=True, dtype=dtype, **options)
        lengths = {
            12: [6, 6, 6, 5, 5, 4, 3, 3, 2, 1, 1, 0],
            24: [6] * 10 + [5, 5, 5, 5, 4, 4, 4, 3, 3, 2, 2, 1, 1, 0],
        }[batch]
        out_size = options.get("proj_size", 40)

        def make_input():
            torch.manual_seed(1)
            x = torch.randn(6, batch, 8, dtype=dtype, requires_grad=True)
            h0 = torch.randn(2, batch, out_size, dtype=dtype, requires_grad=True)
            if kind != "LSTM":
                return x, h0
            c0 = torch.randn(2, batch, 40, dtype=dtype, requires_grad=True)
            return x, (h0, c0)

        assert_backends_agree(layer, make_input, dtype)
        assert_backends_agree(layer, make_input, dtype, lengths=torch.tensor(lengths))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_fused_batch_shares_over_many_chunks(cell):
    # 80 steps of 24 rows x 40 units project their inputs in several chunks
    # of steps. Each thread of a team that shares out the batch keeps its own
    # chunk buffer, since one may start the next chunk while another still
    # reads this one. Uneven lengths put the threads out of step.
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        layer = LAYERS[cell](8, 40, dtype=torch.float64)
        lengths = torch.tensor([80] * 12 + [70, 60, 50, 40, 30, 20, 10, 5, 3, 2, 1, 1])

        def make_input():
            torch.manual_seed(1)
            return torch.randn(80, 24, 8, dtype=torch.float64, requires_grad=True), None

        assert_backends_agree(layer, make_input, torch.float64)
        assert_backends_agree(layer, make_input, torch.float64, lengths=lengths)
    finally:
        torch.set_num_threads(previous)


def _forward_in_child(layer, x, results):
    with torch.no_grad():
        output, _ = layer(x)
    # numpy, because torch's own parallel operations would hang in the child.
    results.put(output.numpy())


def _gradients_in_child(layer, x, results):
    output, _ = layer(x)
    output.sum().backward()
    results.put([p.grad.numpy() for p in layer.parameters()])


def run_in_forked_child(target, layer, x):
    """Return what target(layer, x, results) put in a forked child, or None.

    None means that no result came within 60 s. The child is killed then.
    """
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=target, args=(layer, x, results))
    child.start()
    try:
        # The child's queue only lets it exit once its result has been read.
        result = results.get(timeout=60)
    except queue.Empty:
        result = None
    child.join(10)
    if child.is_alive():
        child.kill()
        child.join()
    assert result is None or child.exitcode == 0
    return result


def test_fused_backward_in_forked_child():
    # 10 x 32 x 64 outputs stay below torch's parallel grain (32768 elements),
    # so out.sum() and its backward run serially in the child. The gate
    # gradients (320 x 192) are past it, and their sums for the bias
    # gradients run in the kernels' own loop.
    torch.manual_seed(0)
    layer = rnnkit.GRU(16, 64)
    x = torch.randn(10, 32, 16)
    output, _ = layer(x)
    output.sum().backward()
    expected = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()

    gradients = run_in_forked_child(_gradients_in_child, layer, x)

    assert gradients is not None, "the forked child gave no result within 60 s"
    for got, want in zip(gradients, expected, strict=True):
        assert torch.equal(torch.from_numpy(got), want)


def test_fused_forward_in_forked_child():
    # A forked child cannot use the OpenMP threads its parent started: a
    # parallel region there would wait for them forever. The kernels run on
    # one thread in such a child and give the parent's results.
    torch.manual_seed(0)
    layer = rnnkit.GRU(16, 64)
    x = torch.randn(20, 32, 16)
    with torch.no_grad():
        expected, _ = layer(x)  # 32 x 64 x 192 per step: run on the team

    output = run_in_forked_child(_forward_in_child, layer, x)

    assert output is not None, "the forked child gave no result within 60 s"
    assert torch.equal(torch.from_numpy(output), expected)


# A child forked before rnnkit loaded its kernels, from a parent whose torch
# had started OpenMP threads. It sends the sum of the outputs, and the parent
# prints it and its own. Every torch operation stays below torch's parallel
# grain, so that only the kernels could start a parallel region in the child.
FORK_BEFORE_LOAD = """
import os, sys, torch, rnnkit
torch.set_num_threads(2)
torch.randn(2000, 2000).sum()
torch.manual_seed(0)
layer = rnnkit.GRU(16, 64)
x = torch.randn(10, 32, 16)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    with torch.no_grad():
        output, _ = layer(x)
    os.write(write, repr(float(output.numpy().sum())).encode())
    os._exit(0)
os.close(write)
child = os.read(read, 100).decode()
os.waitpid(pid, 0)
with torch.no_grad():
    output, _ = layer(x)
print(child, repr(float(output.numpy().sum())))
"""


def test_fused_child_forked_before_load():
    result = subprocess.run(
        [sys.executable, "-c", FORK_BEFORE_LOAD],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    child, parent = result.stdout.split()
    assert child == parent


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_relu_keeps_nan(dtype):
    # torch.relu(nan) is nan, and its gradient passes through a nan output.
    torch.manual_seed(0)
    layer = rnnkit.RNN(3, 5, nonlinearity="relu", dtype=dtype)
    x = torch.randn(4, 2, 3, dtype=dtype)
    x[1, 0, 2] = float("nan")
    results = {}
    for name in ("reference", "fused"):
        value = x.clone().requires_grad_(True)
        with rnnkit.use_backend(name):
            results[name] = run_layer(layer, value, None)

    assert results["reference"][0].isnan().any()
    for index, (want, got) in enumerate(
        zip(results["reference"], results["fused"], strict=True)
    ):
        torch.testing.assert_close(
            got, want, equal_nan=True, msg=lambda m, i=index: f"{i}: {m}"
        )


def test_fused_op_rejects_mixed_dtypes():
    x = torch.randn(3, 2)
    h0 = torch.zeros(1, 4, dtype=torch.float64)
    w_ih, w_hh = torch.randn(4, 2), torch.randn(4, 4)

    with pytest.raises(RuntimeError, match="expected h0 of dtype Float"):
        torch.ops.rnnkit.fused_rnn_forward(
            x, h0, None, w_ih, w_hh, None, None, None, [3], "RNN_TANH", False, False
        )


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_fused_expanded_output_gradient(cell):
    # output.sum() sends an expanded gradient with strides (0, 0).
    torch.manual_seed(0)
    layer = LAYERS[cell](3, 6)
    x = torch.randn(5, 2, 3)
    gradients = {}
    for name in ("reference", "fused"):
        layer.zero_grad()
        with rnnkit.use_backend(name):
            output, _ = layer(x)
        output.sum().backward()
        gradients[name] = [p.grad.clone() for p in layer.parameters()]
    for want, got in zip(gradients["reference"], gradients["fused"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def read_airline_passengers() -> torch.Tensor:
    with open(DATA / "airline-passengers.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    values = torch.tensor([float(row[1]) for row in rows], dtype=torch.float32)
    return (values - values.mean()) / values.std()


def test_fused_matches_reference_on_real_series():
    series = read_airline_passengers()
    windows = series.unfold(0, 24, 12).T.unsqueeze(-1)  # (T=24, B, I=1)
    torch.manual_seed(0)
    layer = rnnkit.LSTM(1, 8, num_layers=2)

    def make_input():
        return windows.clone().requires_grad_(True), None

    assert_backends_agree(layer, make_input, torch.float32)


# Gradient checks of the fused op itself, in float64.


def fused_op_inputs(mode: str, proj_size: int = 0):
    generator = torch.Generator().manual_seed(0)
    gates = {"LSTM": 4, "GRU": 3}.get(mode, 1)
    hidden, features, batch_sizes = 3, 2, [3, 3, 2, 1]
    out_size = proj_size or hidden

    def draw(*shape):
        values = torch.randn(*shape, generator=generator, dtype=torch.float64)
        return values.requires_grad_(True)

    inputs = {
        "input": draw(sum(batch_sizes), features),
        "h0": draw(3, out_size),
        "c0": draw(3, hidden) if mode == "LSTM" else None,
        "w_ih": draw(gates * hidden, features),
        "w_hh": draw(gates * hidden, out_size),
        "b_ih": draw(gates * hidden),
        "b_hh": draw(gates * hidden),
        "w_hr": draw(proj_size, hidden) if proj_size else None,
    }
    return inputs, batch_sizes


@pytest.mark.parametrize(
    "mode, proj_size",
    [("RNN_TANH", 0), ("RNN_RELU", 0), ("GRU", 0), ("LSTM", 0), ("LSTM", 2)],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_op_gradcheck(mode, proj_size, reverse):
    inputs, batch_sizes = fused_op_inputs(mode, proj_size)
    names = [name for name, value in inputs.items() if value is not None]

    def function(*tensors):
        given = dict(inputs)
        given.update(zip(names, tensors, strict=True))
        output, h_n, c_n, _ = torch.ops.rnnkit.fused_rnn_forward(
            *given.values(), batch_sizes, mode, reverse, True
        )
        return (output, h_n, c_n) if mode == "LSTM" else (output, h_n)

    tensors = tuple(inputs[name] for name in names)
    assert torch.autograd.gradcheck(function, tensors)


def test_fused_op_rejects_bad_batch_sizes():
    inputs, _ = fused_op_inputs("GRU")
    with pytest.raises(RuntimeError, match="batch_sizes"):
        torch.ops.rnnkit.fused_rnn_forward(
            *inputs.values(), [2, 3, 3, 1], "GRU", False, False
        )


def test_fused_op_rejects_unknown_mode():
    inputs, batch_sizes = fused_op_inputs("GRU")
    with pytest.raises(RuntimeError, match="unknown recurrent mode 'XYZ'"):
        torch.ops.rnnkit.fused_rnn_forward(
            *inputs.values(), batch_sizes, "XYZ", False, False
        )


# Autograd uses beyond one backward.


@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_fused_gradients_in_eval_mode(cell):
    torch.manual_seed(0)
    layer = LAYERS[cell](3, 4, num_layers=2, dropout=0.5).eval()

    def make_input():
        torch.manual_seed(1)
        return torch.randn(5, 2, 3, requires_grad=True), None

    assert_backends_agree(layer, make_input, torch.float32)


def gradient_penalty(layer, x):
    output, _ = layer(x)
    (grad_x,) = torch.autograd.grad(output.pow(2).sum(), x, create_graph=True)
    penalty = grad_x.pow(2).sum()
    penalty.backward()
    return [p.grad for p in layer.parameters()]


def test_fused_double_backward_raises_naming_reference():
    torch.manual_seed(0)
    layer = rnnkit.GRU(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    with rnnkit.use_backend("fused"), pytest.raises(RuntimeError, match="reference"):
        gradient_penalty(layer, x)


def test_reference_double_backward_works():
    torch.manual_seed(0)
    layer = rnnkit.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, requires_grad=True, dtype=torch.float64)
    with rnnkit.use_backend("reference"):
        gradients = gradient_penalty(layer, x)
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)


# The backend choice.


def grad_function_names(output: torch.Tensor) -> set[str]:
    names, pending = set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None:
            continue
        names.add(node.name())
        pending.extend(next_node for next_node, _ in node.next_functions)
    return names


def uses_fused_op(layer, x) -> bool:
    # In training, the output's grad_fn names the op's C++ autograd function
    # FusedRNNForward. Under torch.compile, it names the op itself.
    output, _ = layer(x)
    return any(
        "fused_rnn_forward" in name or "FusedRNNForward" in name
        for name in grad_function_names(output)
    )


def test_backend_auto_uses_fused_on_cpu_float():
    layer = rnnkit.LSTM(2, 3)
    with rnnkit.use_backend("auto"):
        assert uses_fused_op(layer, torch.randn(4, 1, 2))
    with rnnkit.use_backend("reference"):
        assert not uses_fused_op(layer, torch.randn(4, 1, 2))


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv("RNNKIT_BACKEND", "reference")
    assert rnnkit.get_backend() == "reference"
    assert not uses_fused_op(rnnkit.GRU(2, 3), torch.randn(4, 1, 2))
    monkeypatch.setenv("RNNKIT_BACKEND", "Fused")
    assert rnnkit.get_backend() == "fused"


def test_backend_environment_rejects_unknown(monkeypatch):
    monkeypatch.setenv("RNNKIT_BACKEND", "fast")
    with pytest.raises(
        ValueError, match="RNNKIT_BACKEND.*reference, fused, auto.*'fast'"
    ):
        rnnkit.GRU(2, 3)(torch.randn(4, 1, 2))


def test_set_backend_overrides_environment(monkeypatch):
    monkeypatch.setenv("RNNKIT_BACKEND", "reference")
    try:
        rnnkit.set_backend("fused")
        assert rnnkit.get_backend() == "fused"
    finally:
        rnnkit.set_backend(None)
    assert rnnkit.get_backend() == "reference"


def test_set_backend_rejects_unknown():
    with pytest.raises(ValueError, match="expected the backend to be one of"):
        rnnkit.set_backend("cuda")


def test_use_backend_restores_previous():
    with rnnkit.use_backend("reference"):
        with rnnkit.use_backend("fused"):
            assert rnnkit.get_backend() == "fused"
        assert rnnkit.get_backend() == "reference"


def test_use_backend_rejects_unknown():
    with pytest.raises(ValueError, match="got 'quick'"):
        with rnnkit.use_backend("quick"):
            pass


def test_fused_backend_rejects_unsupported_dtype():
    layer = rnnkit.GRU(2, 3, dtype=torch.bfloat16)
    x = torch.randn(4, 1, 2, dtype=torch.bfloat16)
    with rnnkit.use_backend("fused"), pytest.raises(TypeError, match="bfloat16"):
        layer(x)


def test_auto_backend_runs_unsupported_dtype_on_reference():
    torch.manual_seed(0)
    layer = rnnkit.GRU(2, 3, dtype=torch.bfloat16)
    x = torch.randn(4, 1, 2, dtype=torch.bfloat16)
    with rnnkit.use_backend("auto"):
        output, _ = layer(x)
    with rnnkit.use_backend("reference"):
        expected, _ = layer(x)
    assert torch.equal(output, expected)


def test_unavailable_kernels_fused_raises_auto_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(fused, "_loaded", "OSError: no C++ compiler found")
    monkeypatch.setattr(kernels, "_warned_unavailable", False)
    layer = rnnkit.GRU(2, 3)
    x = torch.randn(4, 1, 2)

    with rnnkit.use_backend("fused"), pytest.raises(RuntimeError, match="no C"):
        layer(x)

    with rnnkit.use_backend("auto"), caplog.at_level(logging.WARNING):
        output, _ = layer(x)
        layer(x)
    warnings = [
        r for r in caplog.records if "fused kernels are unavailable" in r.message
    ]
    assert len(warnings) == 1
    assert "no C++ compiler found" in warnings[0].getMessage()
    with rnnkit.use_backend("reference"):
        expected, _ = layer(x)
    assert torch.equal(output, expected)


def test_reference_module_is_the_fallback():
    # run_direction must hand the same arguments to either path.
    data = torch.randn(6, 2)
    weights = (torch.randn(3, 2), torch.randn(3, 3), None, None, None)
    state = (torch.zeros(2, 3),)
    with rnnkit.use_backend("reference"):
        output, (h_n,) = kernels.run_direction(
            "RNN_TANH", data, [2, 2, 2], state, weights, False
        )
    expected, (expected_h,) = reference.run_direction(
        "RNN_TANH", data, [2, 2, 2], state, weights, False
    )
    assert torch.equal(output, expected)
    assert torch.equal(h_n, expected_h)
    assert backend.get_backend() in backend.BACKENDS


# torch.compile and torch.export see one op.


def test_compiled_layer_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = rnnkit.GRU(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    with rnnkit.use_backend("fused"):
        expected, _ = layer(x)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=False)
        output, _ = compiled(x)
        output.sum().backward()
    torch.testing.assert_close(output, expected)
    assert all(p.grad is not None for p in layer.parameters())


def test_export_shows_the_fused_op():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with rnnkit.use_backend("fused"):
        program = torch.export.export(layer, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert "rnnkit.fused_rnn_forward.default" in targets


def test_prepare_loads_for_fused_and_auto_only(monkeypatch):
    calls = []
    monkeypatch.setattr(fused, "load", lambda: calls.append("load"))
    with rnnkit.use_backend("reference"):
        kernels.prepare()
    assert calls == []
    with rnnkit.use_backend("fused"):
        kernels.prepare()
    assert calls == ["load"]
    with rnnkit.use_backend("auto"):
        kernels.prepare()
    assert calls == ["load", "load"]


def test_prepare_raises_for_fused_only(monkeypatch):
    def fail():
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(fused, "load", fail)
    with rnnkit.use_backend("auto"):
        kernels.prepare()
    with rnnkit.use_backend("fused"), pytest.raises(RuntimeError, match="compiler"):
        kernels.prepare()
