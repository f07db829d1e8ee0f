"""Recurrent dropout, zoneout and DropConnect against their step-by-step definitions.

The oracle in this file runs each layer and direction one step at a time with
plain torch ops, drawing the masks from its own generator in the order that
``rnnkit.regularize`` documents. In eval mode, and with every probability 0,
the layers must equal ``torch.nn``.
"""

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from parity import make_torch_layer

STEPS, BATCH, FEATURES, HIDDEN = 5, 3, 4, 6
DTYPE = torch.float64


def bernoulli(shape, probability, generator):
    return torch.bernoulli(
        torch.full(shape, probability, dtype=DTYPE), generator=generator
    )


def cell_by_definition(mode, x_proj, h, h_recurrent, c, w_hh, b_hh, w_hr):
    """Return the next (h, c) of one step, written out from the equations."""
    recurrent = F.linear(h_recurrent, w_hh, b_hh)
    if mode == "LSTM":
        i, f, g, o = (x_proj + recurrent).chunk(4, dim=-1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        if w_hr is not None:
            h_next = h_next @ w_hr.T
        return h_next, c_next
    if mode == "GRU":
        x_r, x_z, x_n = x_proj.chunk(3, dim=-1)
        h_r, h_z, h_n = recurrent.chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h, None
    if mode == "RNN_TANH":
        return torch.tanh(x_proj + recurrent), None
    return torch.relu(x_proj + recurrent), None


def run_direction_by_definition(layer, index, layer_input, h, c, generator):
    """Run layer and direction ``index`` step by step and return (outputs, h, c)."""
    directions = 2 if layer.bidirectional else 1
    is_lstm = layer.mode == "LSTM"
    p_recurrent = layer.recurrent_dropout
    p_zoneout = layer.zoneout
    p_weight = layer.weight_dropout
    number, direction = divmod(index, directions)
    suffix = f"_l{number}" + ("_reverse" if direction == 1 else "")
    w_ih = getattr(layer, "weight_ih" + suffix)
    w_hh = getattr(layer, "weight_hh" + suffix)
    b_ih = getattr(layer, "bias_ih" + suffix, None)
    b_hh = getattr(layer, "bias_hh" + suffix, None)
    w_hr = getattr(layer, "weight_hr" + suffix, None)

    # Masks, in the documented order.
    if p_weight > 0:
        w_hh = w_hh * bernoulli(w_hh.shape, 1 - p_weight, generator) / (1 - p_weight)
    recurrent_mask = torch.ones_like(h)
    if p_recurrent > 0:
        recurrent_mask = bernoulli(h.shape, 1 - p_recurrent, generator)
        recurrent_mask = recurrent_mask / (1 - p_recurrent)
    keep_h = torch.zeros(STEPS, *h.shape, dtype=DTYPE)
    keep_c = torch.zeros(STEPS, *c.shape, dtype=DTYPE) if is_lstm else None
    if p_zoneout > 0:
        keep_h = bernoulli((STEPS * BATCH, h.shape[1]), p_zoneout, generator)
        keep_h = keep_h.view(STEPS, BATCH, -1)
        if is_lstm:
            keep_c = bernoulli((STEPS * BATCH, c.shape[1]), p_zoneout, generator)
            keep_c = keep_c.view(STEPS, BATCH, -1)

    outputs = [None] * STEPS
    order = range(STEPS - 1, -1, -1) if direction == 1 else range(STEPS)
    for t in order:
        x_proj = F.linear(layer_input[t], w_ih, b_ih)
        h_next, c_next = cell_by_definition(
            layer.mode, x_proj, h, h * recurrent_mask, c, w_hh, b_hh, w_hr
        )
        h = torch.where(keep_h[t] == 1, h, h_next)
        if is_lstm:
            c = torch.where(keep_c[t] == 1, c, c_next)
        outputs[t] = h
    return torch.stack(outputs), h, c


def run_by_definition(layer, x, hx, generator):
    """Run a time-major padded batch (T, B, I) through ``layer`` step by step."""
    directions = 2 if layer.bidirectional else 1
    is_lstm = layer.mode == "LSTM"
    h0, c0 = hx if is_lstm else (hx, None)

    layer_input = x
    h_finals, c_finals = [], []
    for number in range(layer.num_layers):
        outputs = []
        for direction in range(directions):
            index = number * directions + direction
            c = c0[index] if is_lstm else None
            output, h, c = run_direction_by_definition(
                layer, index, layer_input, h0[index], c, generator
            )
            outputs.append(output)
            h_finals.append(h)
            c_finals.append(c)
        layer_input = torch.cat(outputs, dim=-1)

    if is_lstm:
        return layer_input, (torch.stack(h_finals), torch.stack(c_finals))
    return layer_input, torch.stack(h_finals)


LAYER_TYPES = {
    "rnn_tanh": rnnkit.RNN,
    "rnn_relu": rnnkit.RNN,
    "lstm": rnnkit.LSTM,
    "lstm_proj": rnnkit.LSTM,
    "gru": rnnkit.GRU,
}
REGULARIZERS = {
    "recurrent_dropout": {"recurrent_dropout": 0.4},
    "zoneout": {"zoneout": 0.3},
    "weight_dropout": {"weight_dropout": 0.5},
    "all": {"recurrent_dropout": 0.25, "zoneout": 0.2, "weight_dropout": 0.3},
}


def make_layer(kind, num_layers=2, bidirectional=True, **options):
    torch.manual_seed(0)
    if kind == "rnn_relu":
        options["nonlinearity"] = "relu"
    if kind == "lstm_proj":
        options["proj_size"] = 3
    return LAYER_TYPES[kind](
        FEATURES,
        HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dtype=DTYPE,
        **options,
    )


def make_inputs(layer, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(STEPS, BATCH, FEATURES, generator=generator, dtype=DTYPE)
    directions = 2 if layer.bidirectional else 1
    out_size = layer.proj_size or layer.hidden_size
    shape = (layer.num_layers * directions, BATCH, out_size)
    h0 = torch.randn(shape, generator=generator, dtype=DTYPE)
    if layer.mode != "LSTM":
        return x, h0
    c_shape = shape[:-1] + (layer.hidden_size,)
    return x, (h0, torch.randn(c_shape, generator=generator, dtype=DTYPE))


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
@pytest.mark.parametrize("kind", list(LAYER_TYPES))
def test_training_matches_definition(kind, regularizer):
    layer = make_layer(kind, **REGULARIZERS[regularizer]).train()
    x, hx = make_inputs(layer)
    x.requires_grad_(True)

    output, final = layer(x, hx, generator=torch.Generator().manual_seed(5))
    expected, expected_final = run_by_definition(
        layer, x, hx, torch.Generator().manual_seed(5)
    )

    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    for state, expected_state in zip(
        as_tuple(final), as_tuple(expected_final), strict=True
    ):
        torch.testing.assert_close(state, expected_state, rtol=1e-10, atol=1e-10)

    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(9))
    leaves = [x, *layer.parameters()]
    gradients = torch.autograd.grad((output * weights).sum(), leaves)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), leaves)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_training_uses_global_rng(kind):
    layer = make_layer(kind, **REGULARIZERS["all"]).train()
    x, hx = make_inputs(layer)

    torch.manual_seed(11)
    output, _ = layer(x, hx)
    expected, _ = run_by_definition(layer, x, hx, torch.Generator().manual_seed(11))
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)

    torch.manual_seed(12)
    other, _ = layer(x, hx)
    assert not torch.allclose(other, output)


@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm_proj", "gru"])
def test_eval_equals_torch(kind, regularizer):
    layer = make_layer(kind, **REGULARIZERS[regularizer]).eval()
    torch_layer = rnnkit.to_torch(layer).eval()
    plain = rnnkit.from_torch(torch_layer).eval()
    x, hx = make_inputs(layer)

    output, final = layer(x, hx)
    expected, expected_final = torch_layer(x, hx)
    plain_output, _ = plain(x, hx)

    assert torch.equal(output, plain_output)
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    for state, expected_state in zip(
        as_tuple(final), as_tuple(expected_final), strict=True
    ):
        torch.testing.assert_close(state, expected_state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_zero_probabilities_equal_torch_in_training(kind):
    torch_layer = make_torch_layer(
        kind, DTYPE, input_size=FEATURES, hidden_size=HIDDEN, num_layers=2,
        bidirectional=True,
    )  # fmt: skip
    layer = make_layer(
        kind, recurrent_dropout=0.0, zoneout=0.0, weight_dropout=0.0
    ).train()
    layer.load_state_dict(torch_layer.state_dict())
    x, hx = make_inputs(layer)

    output, _ = layer(x, hx)
    expected, _ = torch_layer(x, hx)

    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)


def test_zoneout_keeps_previous_value_at_rate_p():
    # A unit zoned out at step t repeats its value of step t - 1 exactly.
    layer = make_layer("gru", num_layers=1, bidirectional=False, zoneout=0.3).train()
    torch.manual_seed(0)
    x = torch.randn(200, 16, FEATURES, dtype=DTYPE)
    output, _ = layer(x)
    repeated = (output[1:] == output[:-1]).double().mean().item()
    # 199 * 16 * 6 draws: the standard error of the rate is about 0.006.
    assert abs(repeated - 0.3) < 0.03


def test_recurrent_dropout_mask_is_fixed_per_sequence():
    # With W_hh = identity and no input, h_t = tanh(m * h_{t-1}) for a fixed m:
    # a dropped unit is 0 from step 0 on and a kept unit never becomes 0.
    layer = rnnkit.RNN(1, 8, bias=False, recurrent_dropout=0.5, dtype=DTYPE).train()
    with torch.no_grad():
        layer.weight_ih_l0.zero_()
        layer.weight_hh_l0.copy_(torch.eye(8, dtype=DTYPE))
    h0 = torch.full((1, 4, 8), 0.5, dtype=DTYPE)
    output, _ = layer(torch.zeros(10, 4, 1, dtype=DTYPE), h0)
    dropped = output[0] == 0
    assert dropped.any()
    assert (~dropped).any()
    for t in range(10):
        assert torch.equal(output[t] == 0, dropped), f"step {t}"


def test_weight_dropout_draws_one_mask_per_call():
    # Two calls with different seeds see different W_hh; one call sees one W_hh,
    # so the same input twice in a batch gives the same output.
    layer = make_layer("lstm", num_layers=1, bidirectional=False, weight_dropout=0.5)
    x, _ = make_inputs(layer)
    x = torch.cat([x[:, :1], x[:, :1]], dim=1)
    output, _ = layer(x, generator=torch.Generator().manual_seed(1))
    other, _ = layer(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(output[:, 0], output[:, 1])
    assert not torch.allclose(output, other)


def test_regularizers_with_lengths():
    layer = make_layer("lstm", **REGULARIZERS["all"]).train()
    x, hx = make_inputs(layer)
    lengths = [5, 0, 2]
    output, (h_n, c_n) = layer(x, hx, lengths=lengths)
    for row, length in enumerate(lengths):
        assert torch.all(output[length:, row] == 0), f"row {row}"
    torch.testing.assert_close(h_n[:, 1], hx[0][:, 1])
    torch.testing.assert_close(c_n[:, 1], hx[1][:, 1])


def test_regularizers_in_repr():
    layer = make_layer("gru", **REGULARIZERS["all"])
    text = repr(layer)
    assert "recurrent_dropout=0.25" in text
    assert "zoneout=0.2" in text
    assert "weight_dropout=0.3" in text


@pytest.mark.parametrize("name", ["recurrent_dropout", "zoneout", "weight_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_bad_probability_raises(name, value):
    for layer_type in (rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU):
        with pytest.raises(ValueError, match=rf"expected {name} to be a probability"):
            layer_type(FEATURES, HIDDEN, **{name: value})


@pytest.mark.parametrize("kind", ["lstm_proj", "gru"])
def test_regularizers_packed_equal_lengths(kind):
    # With distinct lengths both forms sort the rows the same way, so the
    # same generator draws the same masks for the same rows.
    layer = make_layer(kind, **REGULARIZERS["all"]).train()
    x, hx = make_inputs(layer)
    lengths = [3, 5, 1]
    expected, expected_final = layer(
        x, hx, lengths=lengths, generator=torch.Generator().manual_seed(8)
    )
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor(lengths), enforce_sorted=False
    )
    output, final = layer(packed, hx, generator=torch.Generator().manual_seed(8))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(output, total_length=STEPS)

    torch.testing.assert_close(padded, expected, rtol=1e-12, atol=1e-12)
    for state, expected_state in zip(
        as_tuple(final), as_tuple(expected_final), strict=True
    ):
        torch.testing.assert_close(state, expected_state, rtol=1e-12, atol=1e-12)


def test_regularizers_unbatched_input():
    layer = make_layer("gru", **REGULARIZERS["all"]).train()
    x, hx = make_inputs(layer)
    output, h_n = layer(x[:, 0], hx[:, 0], generator=torch.Generator().manual_seed(1))
    assert output.shape == (STEPS, 2 * HIDDEN)
    assert h_n.shape == (4, HIDDEN)
    eval_output, _ = layer.eval()(x[:, 0], hx[:, 0])
    assert not torch.allclose(output, eval_output)


def test_bad_generator_raises():
    layer = make_layer("gru", zoneout=0.1)
    x, _ = make_inputs(layer)
    with pytest.raises(TypeError, match="expected generator to be a torch.Generator"):
        layer(x, generator=5)
