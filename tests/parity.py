"""Helpers that run a torch.nn layer and its rnnkit copy on the same inputs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}

TORCH_TYPES = {
    "rnn_tanh": nn.RNN,
    "rnn_relu": nn.RNN,
    "lstm": nn.LSTM,
    "gru": nn.GRU,
}


def make_torch_layer(kind: str, dtype=torch.float32, seed: int = 0, **options):
    torch.manual_seed(seed)
    if kind == "rnn_relu":
        options["nonlinearity"] = "relu"
    return TORCH_TYPES[kind](dtype=dtype, **options)


def make_inputs(layer: nn.Module, form: str, with_state: bool, seed: int = 1):
    """Return (input for the layer, leaves to differentiate, hx or None).

    ``form`` is one of "padded", "unbatched", "packed_sorted", "packed_unsorted".
    """
    generator = torch.Generator().manual_seed(seed)
    dtype = layer.weight_ih_l0.dtype
    steps, batch = 5, 3
    features = layer.input_size
    if form == "unbatched":
        x = torch.randn(steps, features, generator=generator, dtype=dtype)
    elif layer.batch_first:
        x = torch.randn(batch, steps, features, generator=generator, dtype=dtype)
    else:
        x = torch.randn(steps, batch, features, generator=generator, dtype=dtype)
    x.requires_grad_(True)
    leaves = [x]

    value = x
    if form.startswith("packed"):
        lengths = [5, 3, 2] if form == "packed_sorted" else [2, 5, 3]
        value = pack_padded_sequence(
            x,
            torch.tensor(lengths),
            batch_first=layer.batch_first,
            enforce_sorted=form == "packed_sorted",
        )

    hx = None
    if with_state:
        directions = 2 if layer.bidirectional else 1
        out_size = getattr(layer, "proj_size", 0) or layer.hidden_size
        shape = (layer.num_layers * directions, out_size)
        if form != "unbatched":
            shape = (shape[0], batch, shape[1])
        h0 = torch.randn(shape, generator=generator, dtype=dtype, requires_grad=True)
        leaves.append(h0)
        hx = h0
        if isinstance(layer, nn.LSTM):
            c_shape = shape[:-1] + (layer.hidden_size,)
            c0 = torch.randn(
                c_shape, generator=generator, dtype=dtype, requires_grad=True
            )
            leaves.append(c0)
            hx = (h0, c0)
    return value, leaves, hx


def run_with_gradients(layer: nn.Module, value, leaves, hx, seed: int = 2):
    """Run the layer and return its outputs, states and every gradient, as tensors."""
    output, state = layer(value, hx)
    states = state if isinstance(state, tuple) else (state,)
    data = output.data if isinstance(output, PackedSequence) else output

    # A random weighting makes every output element matter to the gradients.
    generator = torch.Generator().manual_seed(seed)
    loss = (data * torch.randn(data.shape, generator=generator, dtype=data.dtype)).sum()
    for s in states:
        loss = (
            loss + (s * torch.randn(s.shape, generator=generator, dtype=s.dtype)).sum()
        )
    parameters = [p for _, p in sorted(layer.named_parameters())]
    gradients = torch.autograd.grad(loss, leaves + parameters)
    results = {"output": data}
    for index, s in enumerate(states):
        results[f"state{index}"] = s
    if isinstance(output, PackedSequence):
        results["sorted_indices"] = output.sorted_indices
        results["batch_sizes"] = output.batch_sizes
    names = [f"leaf{i}" for i in range(len(leaves))]
    names += [f"grad_{n}" for n, _ in sorted(layer.named_parameters())]
    for name, gradient in zip(names, gradients, strict=True):
        results[f"d_{name}"] = gradient
    return results


def assert_same_results(expected: dict, actual: dict, dtype) -> None:
    assert expected.keys() == actual.keys()
    tolerance = TOLERANCE[dtype]
    for name, value in expected.items():
        other = actual[name]
        if value is None:
            assert other is None, name
            continue
        assert other.shape == value.shape, f"{name}: {other.shape} != {value.shape}"
        if value.dtype.is_floating_point:
            torch.testing.assert_close(
                other,
                value,
                rtol=tolerance,
                atol=tolerance,
                msg=lambda m, n=name: f"{n}: {m}",
            )
        else:
            assert torch.equal(other, value), name


def compare_with_torch(kind, dtype, form, with_state, training, **options):
    torch_layer = make_torch_layer(kind, dtype, **options)
    rnnkit_layer = rnnkit.from_torch(torch_layer)
    torch_layer.train(training)
    rnnkit_layer.train(training)

    value, leaves, hx = make_inputs(torch_layer, form, with_state)
    expected = run_with_gradients(torch_layer, value, leaves, hx)
    value, leaves, hx = make_inputs(torch_layer, form, with_state)
    actual = run_with_gradients(rnnkit_layer, value, leaves, hx)
    assert_same_results(expected, actual, dtype)
