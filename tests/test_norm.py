"""Layer-normalised LSTM and GRU against their equations written out step by step.

The oracle computes the layer norm from its definition (mean, biased variance,
epsilon 1e-5) with plain torch ops, one step at a time, and draws the
regulariser masks in the order that ``rnnkit.regularize`` documents.
"""

import pytest
import torch

from rnnkit.norm import LayerNormGRU, LayerNormLSTM
from rnnkit.streaming import Streaming

STEPS, BATCH, FEATURES, HIDDEN = 5, 3, 4, 6
DTYPE = torch.float64
TOLERANCE = {"rtol": 1e-10, "atol": 1e-10}


def normalise(a, gain, bias):
    mean = a.mean(dim=-1, keepdim=True)
    variance = ((a - mean) ** 2).mean(dim=-1, keepdim=True)
    result = gain * (a - mean) / torch.sqrt(variance + 1e-5)
    return result if bias is None else result + bias


def bernoulli(shape, probability, generator):
    return torch.bernoulli(
        torch.full(shape, probability, dtype=DTYPE), generator=generator
    )


def run_direction_by_definition(layer, suffix, reverse, layer_input, h, c, generator):
    kinds = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"]
    kinds += ["gain_ih", "gain_hh", "gain_c", "bias_c"]
    parameter = {kind: getattr(layer, kind + suffix, None) for kind in kinds}
    w_hh = parameter["weight_hh"]
    is_lstm = layer.mode == "LSTM"

    if layer.training and layer.weight_dropout > 0:
        p = layer.weight_dropout
        w_hh = w_hh * bernoulli(w_hh.shape, 1 - p, generator) / (1 - p)
    recurrent_mask = torch.ones_like(h)
    if layer.training and layer.recurrent_dropout > 0:
        p = layer.recurrent_dropout
        recurrent_mask = bernoulli(h.shape, 1 - p, generator) / (1 - p)
    keep_h = torch.zeros(STEPS, *h.shape, dtype=DTYPE)
    keep_c = torch.zeros(STEPS, BATCH, HIDDEN, dtype=DTYPE)
    if layer.training and layer.zoneout > 0:
        p = layer.zoneout
        keep_h = bernoulli((STEPS * BATCH, h.shape[1]), p, generator).view(keep_h.shape)
        if is_lstm:
            keep_c = bernoulli((STEPS * BATCH, HIDDEN), p, generator).view(keep_c.shape)

    outputs = [None] * STEPS
    for t in range(STEPS - 1, -1, -1) if reverse else range(STEPS):
        x_part = normalise(
            layer_input[t] @ parameter["weight_ih"].T,
            parameter["gain_ih"],
            parameter["bias_ih"],
        )
        h_part = normalise(
            (h * recurrent_mask) @ w_hh.T,
            parameter["gain_hh"],
            parameter["bias_hh"],
        )
        if is_lstm:
            i, f, g, o = (x_part + h_part).chunk(4, dim=-1)
            c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c_normalised = normalise(c_next, parameter["gain_c"], parameter["bias_c"])
            h_next = torch.sigmoid(o) * torch.tanh(c_normalised)
            if parameter["weight_hr"] is not None:
                h_next = h_next @ parameter["weight_hr"].T
            c = torch.where(keep_c[t] == 1, c, c_next)
        else:
            x_r, x_z, x_n = x_part.chunk(3, dim=-1)
            h_r, h_z, h_n = h_part.chunk(3, dim=-1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            n = torch.tanh(x_n + r * h_n)
            h_next = (1 - z) * n + z * h
        h = torch.where(keep_h[t] == 1, h, h_next)
        outputs[t] = h
    return torch.stack(outputs), h, c


def run_by_definition(layer, x, hx, generator=None):
    is_lstm = layer.mode == "LSTM"
    h0, c0 = hx if is_lstm else (hx, None)
    directions = 2 if layer.bidirectional else 1
    layer_input = x
    h_finals, c_finals = [], []
    for number in range(layer.num_layers):
        outputs = []
        for direction in range(directions):
            index = number * directions + direction
            suffix = f"_l{number}" + ("_reverse" if direction else "")
            c = c0[index] if is_lstm else None
            output, h, c = run_direction_by_definition(
                layer, suffix, direction == 1, layer_input, h0[index], c, generator
            )
            outputs.append(output)
            h_finals.append(h)
            c_finals.append(c)
        layer_input = torch.cat(outputs, dim=-1)
    if is_lstm:
        return layer_input, (torch.stack(h_finals), torch.stack(c_finals))
    return layer_input, torch.stack(h_finals)


LAYERS = {
    "lstm": (LayerNormLSTM, {}),
    "lstm_proj": (LayerNormLSTM, {"proj_size": 3}),
    "lstm_nobias": (LayerNormLSTM, {"bias": False}),
    "gru": (LayerNormGRU, {}),
    "gru_nobias": (LayerNormGRU, {"bias": False}),
}
TORCH_TYPES = {LayerNormLSTM: torch.nn.LSTM, LayerNormGRU: torch.nn.GRU}


def make_layer(kind, num_layers=2, bidirectional=True, **options):
    layer_type, defaults = LAYERS[kind]
    torch.manual_seed(0)
    layer = layer_type(
        FEATURES,
        HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dtype=DTYPE,
        **defaults,
        **options,
    )
    # Gains and bias_c away from their initial 1 and 0, so that a swapped or
    # unused one shows.
    with torch.no_grad():
        for name, value in layer.named_parameters():
            if name.startswith(("gain", "bias_c")):
                value.uniform_(0.5, 1.5)
    return layer


def make_inputs(layer, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(STEPS, BATCH, FEATURES, generator=generator, dtype=DTYPE)
    directions = 2 if layer.bidirectional else 1
    out_size = layer.proj_size or HIDDEN
    h0 = torch.randn(
        layer.num_layers * directions, BATCH, out_size, generator=generator, dtype=DTYPE
    )
    if layer.mode != "LSTM":
        return x, h0
    c0 = torch.randn(
        layer.num_layers * directions, BATCH, HIDDEN, generator=generator, dtype=DTYPE
    )
    return x, (h0, c0)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def assert_same_run(layer, x, hx, seed=None):
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    output, final = layer(x, hx, generator=generator)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    expected, expected_final = run_by_definition(layer, x, hx, generator)

    torch.testing.assert_close(output, expected, **TOLERANCE)
    for state, expected_state in zip(
        as_tuple(final), as_tuple(expected_final), strict=True
    ):
        torch.testing.assert_close(state, expected_state, **TOLERANCE)

    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(3))
    leaves = [x, *layer.parameters()]
    gradients = torch.autograd.grad((output * weights).sum(), leaves)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), leaves)
    names = ["input"] + [name for name, _ in layer.named_parameters()]
    for name, gradient, expected_gradient in zip(
        names, gradients, expected_gradients, strict=True
    ):
        torch.testing.assert_close(
            gradient, expected_gradient, **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_norm_matches_definition(kind):
    layer = make_layer(kind).eval()
    x, hx = make_inputs(layer)
    assert_same_run(layer, x.requires_grad_(True), hx)


@pytest.mark.parametrize("kind", ["lstm_proj", "gru"])
def test_layer_norm_regularized_matches_definition(kind):
    layer = make_layer(kind, recurrent_dropout=0.3, zoneout=0.2, weight_dropout=0.4)
    layer.train()
    x, hx = make_inputs(layer)
    assert_same_run(layer, x.requires_grad_(True), hx, seed=7)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_norm_eval_ignores_regularizers(kind):
    layer = make_layer(kind, recurrent_dropout=0.3, zoneout=0.2, weight_dropout=0.4)
    plain = make_layer(kind)
    x, hx = make_inputs(layer)
    output, _ = layer.eval()(x, hx)
    expected, _ = plain.eval()(x, hx)
    assert torch.equal(output, expected)

    trained, _ = layer.train()(x, hx)
    assert not torch.allclose(trained, expected)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_norm_lengths_match_rows_alone(kind):
    layer = make_layer(kind)
    x, hx = make_inputs(layer)
    lengths = [3, 5, 0]
    output, final = layer(x, hx, lengths=lengths)
    for row, length in enumerate(lengths):
        row_hx = tuple(s[:, row : row + 1] for s in as_tuple(hx))
        if length == 0:
            for state, initial in zip(as_tuple(final), row_hx, strict=True):
                torch.testing.assert_close(state[:, row : row + 1], initial)
            continue
        alone, alone_final = layer(
            x[:length, row : row + 1], row_hx if len(row_hx) == 2 else row_hx[0]
        )
        torch.testing.assert_close(output[:length, row : row + 1], alone)
        assert torch.all(output[length:, row] == 0)
        for state, expected in zip(as_tuple(final), as_tuple(alone_final), strict=True):
            torch.testing.assert_close(state[:, row : row + 1], expected)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_norm_batch_first_and_unbatched(kind):
    layer = make_layer(kind, batch_first=True)
    x, _ = make_inputs(layer)
    expected, _ = layer(x.transpose(0, 1).contiguous())
    layer.batch_first = False
    time_major, _ = layer(x)
    torch.testing.assert_close(expected.transpose(0, 1), time_major)
    unbatched, _ = layer(x[:, 0])
    torch.testing.assert_close(unbatched, time_major[:, 0])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_norm_streaming_equals_one_call(kind):
    layer = make_layer(kind, bidirectional=False)
    x, _ = make_inputs(layer)
    expected, _ = layer(x)
    stream = Streaming(layer)
    outputs = [stream(chunk) for chunk in x.split([2, 1, 2])]
    torch.testing.assert_close(torch.cat(outputs), expected)


@pytest.mark.parametrize("layer_type", [LayerNormLSTM, LayerNormGRU])
def test_layer_norm_initial_parameters(layer_type):
    torch.manual_seed(0)
    layer = layer_type(FEATURES, HIDDEN, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    reference = TORCH_TYPES[layer_type](
        FEATURES, HIDDEN, num_layers=2, bidirectional=True
    )
    for name, value in reference.named_parameters():
        assert torch.equal(getattr(layer, name), value), name
    norm_names = [
        n for n, _ in layer.named_parameters() if n.startswith(("gain", "bias_c"))
    ]
    expected_count = 4 * (4 if layer_type is LayerNormLSTM else 2)
    assert len(norm_names) == expected_count
    for name in norm_names:
        value = getattr(layer, name)
        expected = 0.0 if name.startswith("bias") else 1.0
        assert torch.all(value == expected), name


def test_layer_norm_without_bias_has_no_bias_c():
    layer = LayerNormLSTM(FEATURES, HIDDEN, bias=False)
    names = {name for name, _ in layer.named_parameters()}
    assert names == {
        "weight_ih_l0",
        "weight_hh_l0",
        "gain_ih_l0",
        "gain_hh_l0",
        "gain_c_l0",
    }


def test_layer_norm_to_torch_raises():
    with pytest.raises(TypeError, match="no torch.nn equivalent"):
        LayerNormGRU(FEATURES, HIDDEN).to_torch()


@pytest.mark.parametrize("layer_type", [LayerNormLSTM, LayerNormGRU])
def test_layer_norm_bad_arguments_raise(layer_type):
    with pytest.raises(ValueError, match="expected zoneout to be a probability"):
        layer_type(FEATURES, HIDDEN, zoneout=1.0)
    with pytest.raises(ValueError, match="expected hidden_size greater than zero"):
        layer_type(FEATURES, 0)
    layer = layer_type(FEATURES, HIDDEN)
    with pytest.raises(ValueError, match="expected input with 4 features"):
        layer(torch.zeros(STEPS, BATCH, FEATURES + 1))
