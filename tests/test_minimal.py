"""minGRU and minLSTM: the parallel scan against the sequential definition.

The oracle is the recurrence written out in this file with plain torch ops,
one step at a time, in float64. The layer's parallel scan and its sequential
mode must both match it, and each other to 1e-5 in float32.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.minimal import MinGRU, MinLSTM, log_space_scan
from rnnkit.streaming import Streaming

STEPS, BATCH, FEATURES, HIDDEN = 7, 3, 4, 5
LAYER_TYPES = {"min_gru": MinGRU, "min_lstm": MinLSTM}


def candidate(k):
    return torch.where(k >= 0, k + 0.5, 1 / (1 + torch.exp(-k)))


def step_by_definition(kind, x_proj, h):
    if kind == "min_gru":
        k_z, k_h = x_proj.chunk(2, dim=-1)
        z = 1 / (1 + torch.exp(-k_z))
        return (1 - z) * h + z * candidate(k_h)
    k_f, k_i, k_h = x_proj.chunk(3, dim=-1)
    f = 1 / (1 + torch.exp(-k_f))
    i = 1 / (1 + torch.exp(-k_i))
    return f / (f + i) * h + i / (f + i) * candidate(k_h)


def run_by_definition(kind, layer, x, h0):
    """Run a time-major padded batch (T, B, I) through ``layer`` step by step."""
    directions = 2 if layer.bidirectional else 1
    layer_input = x
    finals = []
    for number in range(layer.num_layers):
        outputs = []
        for direction in range(directions):
            index = number * directions + direction
            suffix = f"_l{number}" + ("_reverse" if direction else "")
            weight = getattr(layer, "weight_ih" + suffix)
            bias = getattr(layer, "bias_ih" + suffix, None)
            h = h0[index]
            states = [None] * x.shape[0]
            order = range(x.shape[0])
            for t in reversed(order) if direction else order:
                x_proj = layer_input[t] @ weight.T
                if bias is not None:
                    x_proj = x_proj + bias
                h = step_by_definition(kind, x_proj, h)
                states[t] = h
            outputs.append(torch.stack(states))
            finals.append(h)
        layer_input = torch.cat(outputs, dim=-1)
    return layer_input, torch.stack(finals)


def make_layer(kind, dtype=torch.float64, num_layers=2, bidirectional=True, **options):
    torch.manual_seed(0)
    return LAYER_TYPES[kind](
        FEATURES,
        HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dtype=dtype,
        **options,
    )


def make_inputs(layer, steps=STEPS, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    directions = 2 if layer.bidirectional else 1
    x = torch.randn(steps, BATCH, FEATURES, generator=generator, dtype=dtype)
    # Scaled up so that both branches of g (x >= 0 and x < 0) are reached.
    x = 3 * x
    h0 = torch.randn(
        layer.num_layers * directions, BATCH, HIDDEN, generator=generator, dtype=dtype
    )
    return x, h0


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", list(LAYER_TYPES))
def test_minimal_matches_definition(kind, bias, parallel):
    layer = make_layer(kind, bias=bias)
    x, h0 = make_inputs(layer)
    x.requires_grad_(True)
    h0.requires_grad_(True)

    output, h_n = layer(x, h0, parallel=parallel)
    expected, expected_h_n = run_by_definition(kind, layer, x, h0)

    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n, expected_h_n, rtol=1e-10, atol=1e-10)

    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(2))
    leaves = [x, h0, *layer.parameters()]
    gradients = torch.autograd.grad((output * weights).sum(), leaves)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), leaves)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 300])
@pytest.mark.parametrize("kind", list(LAYER_TYPES))
def test_parallel_equals_sequential_float32(kind, steps):
    # 300 steps cross the scan's block boundary at 64 several times. The
    # states reach about 4 in size, so the tolerance is relative and absolute.
    layer = make_layer(kind, dtype=torch.float32)
    x, h0 = make_inputs(layer, steps=steps, dtype=torch.float32)
    parallel, parallel_h_n = layer(x, h0, parallel=True)
    sequential, sequential_h_n = layer(x, h0, parallel=False)
    torch.testing.assert_close(parallel, sequential, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parallel_h_n, sequential_h_n, rtol=1e-5, atol=1e-5)


def test_log_space_scan_any_sign_initial_state():
    generator = torch.Generator().manual_seed(3)
    log_a = -torch.rand(200, 2, 3, generator=generator, dtype=torch.float64) * 2
    log_b = torch.randn(200, 2, 3, generator=generator, dtype=torch.float64)
    h0 = torch.tensor([[-5.0, 0.0, 2.0], [1e-3, -1e-3, 7.0]], dtype=torch.float64)

    h = h0
    expected = []
    for t in range(200):
        h = torch.exp(log_a[t]) * h + torch.exp(log_b[t])
        expected.append(h)

    result = log_space_scan(log_a, log_b, h0)
    torch.testing.assert_close(result, torch.stack(expected), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("kind", list(LAYER_TYPES))
def test_minimal_lengths_match_rows_alone(kind, parallel):
    layer = make_layer(kind)
    x, h0 = make_inputs(layer)
    lengths = [5, 7, 0]
    output, h_n = layer(x, h0, lengths=lengths, parallel=parallel)
    for row, length in enumerate(lengths):
        row_h0 = h0[:, row : row + 1]
        assert torch.all(output[length:, row] == 0), f"row {row}"
        if length == 0:
            torch.testing.assert_close(h_n[:, row : row + 1], row_h0)
            continue
        alone, alone_h_n = layer(x[:length, row : row + 1], row_h0)
        torch.testing.assert_close(output[:length, row : row + 1], alone)
        torch.testing.assert_close(h_n[:, row : row + 1], alone_h_n)


@pytest.mark.parametrize("kind", list(LAYER_TYPES))
def test_minimal_packed_equals_lengths(kind):
    layer = make_layer(kind)
    x, h0 = make_inputs(layer)
    lengths = [5, 7, 2]
    expected, expected_h_n = layer(x, h0, lengths=lengths)

    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    output, h_n = layer(packed, h0)
    padded, _ = pad_packed_sequence(output, total_length=STEPS)

    assert torch.equal(output.sorted_indices, packed.sorted_indices)
    assert torch.equal(output.batch_sizes, packed.batch_sizes)
    torch.testing.assert_close(padded, expected)
    torch.testing.assert_close(h_n, expected_h_n)


@pytest.mark.parametrize("kind", list(LAYER_TYPES))
def test_minimal_batch_first_and_unbatched(kind):
    layer = make_layer(kind, batch_first=True)
    x, h0 = make_inputs(layer)
    output, h_n = layer(x.transpose(0, 1), h0)
    layer.batch_first = False
    expected, expected_h_n = layer(x, h0)
    torch.testing.assert_close(output.transpose(0, 1), expected)
    torch.testing.assert_close(h_n, expected_h_n)

    unbatched, unbatched_h_n = layer(x[:, 1], h0[:, 1])
    torch.testing.assert_close(unbatched, expected[:, 1])
    torch.testing.assert_close(unbatched_h_n, expected_h_n[:, 1])


@pytest.mark.parametrize("kind", list(LAYER_TYPES))
def test_minimal_streaming_steps_equal_scan(kind):
    layer = make_layer(kind, bidirectional=False)
    x, h0 = make_inputs(layer)
    expected, _ = layer(x, h0, parallel=True)
    stream = Streaming(layer)
    stream.state = h0
    outputs = [stream.step(x[t]) for t in range(STEPS)]
    torch.testing.assert_close(torch.stack(outputs), expected)


def test_minimal_dropout_between_layers():
    layer = make_layer("min_gru", dropout=0.5)
    x, h0 = make_inputs(layer)
    expected, _ = layer.eval()(x, h0)
    torch.manual_seed(4)
    trained, _ = layer.train()(x, h0)
    assert not torch.allclose(trained, expected)
    one_layer = make_layer("min_gru", num_layers=1, dropout=0.0)
    assert "dropout" not in repr(one_layer)


@pytest.mark.parametrize("layer_type", [MinGRU, MinLSTM])
def test_minimal_bad_input_raises(layer_type):
    layer = layer_type(FEATURES, HIDDEN, num_layers=2)
    x = torch.zeros(STEPS, BATCH, FEATURES)
    with pytest.raises(ValueError, match="expected input with 4 features"):
        layer(torch.zeros(STEPS, BATCH, FEATURES + 1))
    with pytest.raises(ValueError, match="expected input of 3 dimensions"):
        layer(torch.zeros(STEPS))
    with pytest.raises(TypeError, match="expected input of dtype torch.float32"):
        layer(x.double())
    with pytest.raises(ValueError, match=r"expected hx of shape \(2, 3, 5\)"):
        layer(x, torch.zeros(1, BATCH, HIDDEN))
    with pytest.raises(TypeError, match="expected hx to be a Tensor"):
        layer(x, (torch.zeros(2, BATCH, HIDDEN),))
    with pytest.raises(ValueError, match="must not exceed the sequence length"):
        layer(x, lengths=[STEPS + 1, 1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        layer(x, lengths=[-1, 1, 1])
    with pytest.raises(ValueError, match=r"expected lengths of shape \(3,\)"):
        layer(x, lengths=[1, 1])
    with pytest.raises(ValueError, match="expected hidden_size greater than zero"):
        layer_type(FEATURES, 0)
    with pytest.raises(ValueError, match="expected dropout to be a probability"):
        layer_type(FEATURES, HIDDEN, dropout=1.5)
