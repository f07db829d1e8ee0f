"""rnnkit.trace against torch.nn weights and against the layer's own output.

The oracle for gate values is ``expected_steps`` below: the gate equations
written out one unit vector at a time from a ``torch.nn`` layer's weights,
one batch row and one step at a time. The oracle for h is the rnnkit layer's
own forward, which must match bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.kernels.backend import use_backend
from rnnkit.trace import GRUSteps, LSTMSteps, RNNSteps, Trace

# "auto" picks the fused kernels for float32 CPU input where they are built.
BACKENDS = ["reference", "fused", "auto"]

MODES = {
    "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTM, {}),
    "lstm_proj": (nn.LSTM, {"proj_size": 2}),
    "gru": (nn.GRU, {}),
}


def make_pair(mode: str, input_size=3, hidden_size=4, dtype=torch.float64, **options):
    """Return a torch.nn layer and the rnnkit layer holding the same weights."""
    kind, extra = MODES[mode]
    reference = kind(input_size, hidden_size, dtype=dtype, **extra, **options)
    layer = rnnkit.from_torch(reference)
    layer.eval()
    return reference, layer


def expected_steps(reference: nn.Module, x, h0, c0=None, lengths=None):
    """Return [layer][direction] dicts of (T, B, *) gate values of a torch.nn layer.

    ``x`` is (T, B, I) time-major, ``h0`` and ``c0`` are (L*D, B, *). Row b
    runs ``lengths[b]`` steps. Its fields past that are NaN, and its h is 0
    there, as in the layer's padded output.
    """
    steps, batch, _ = x.shape
    lengths = [steps] * batch if lengths is None else list(lengths)
    directions = 2 if reference.bidirectional else 1
    is_lstm = isinstance(reference, nn.LSTM)
    is_gru = isinstance(reference, nn.GRU)
    relu = getattr(reference, "nonlinearity", "tanh") == "relu"
    hidden = reference.hidden_size

    result = []
    layer_input = x
    for layer in range(reference.num_layers):
        per_direction = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih = getattr(reference, "weight_ih" + suffix)
            w_hh = getattr(reference, "weight_hh" + suffix)
            b_ih = getattr(reference, "bias_ih" + suffix)
            b_hh = getattr(reference, "bias_hh" + suffix)
            w_hr = getattr(reference, "weight_hr" + suffix, None)
            index = layer * directions + direction
            out_size = h0.shape[-1]

            def nan(width):
                return torch.full((steps, batch, width), float("nan"), dtype=x.dtype)

            if is_lstm:
                names = {"i": hidden, "f": hidden, "g": hidden, "o": hidden}
                names |= {"c": hidden, "pre_activation": 4 * hidden}
            elif is_gru:
                names = {"r": hidden, "z": hidden, "n": hidden}
                names |= {"pre_activation": 3 * hidden}
            else:
                names = {"pre_activation": hidden}
            fields = {name: nan(width) for name, width in names.items()}
            fields["h"] = torch.zeros(steps, batch, out_size, dtype=x.dtype)

            for b in range(batch):
                h = h0[index, b]
                c = c0[index, b] if is_lstm else None
                order = range(lengths[b])
                if direction == 1:
                    order = reversed(order)
                for t in order:
                    xt = layer_input[t, b]
                    if is_lstm:
                        w_ii, w_if, w_ig, w_io = w_ih.chunk(4)
                        w_hi, w_hf, w_hg, w_ho = w_hh.chunk(4)
                        b_ii, b_if, b_ig, b_io = b_ih.chunk(4)
                        b_hi, b_hf, b_hg, b_ho = b_hh.chunk(4)
                        a_i = w_ii @ xt + b_ii + w_hi @ h + b_hi
                        a_f = w_if @ xt + b_if + w_hf @ h + b_hf
                        a_g = w_ig @ xt + b_ig + w_hg @ h + b_hg
                        a_o = w_io @ xt + b_io + w_ho @ h + b_ho
                        i = 1 / (1 + torch.exp(-a_i))
                        f = 1 / (1 + torch.exp(-a_f))
                        g = torch.tanh(a_g)
                        o = 1 / (1 + torch.exp(-a_o))
                        c = f * c + i * g
                        h = o * torch.tanh(c)
                        if w_hr is not None:
                            h = w_hr @ h
                        values = {"i": i, "f": f, "g": g, "o": o, "c": c}
                        values["pre_activation"] = torch.cat((a_i, a_f, a_g, a_o))
                    elif is_gru:
                        w_ir, w_iz, w_in = w_ih.chunk(3)
                        w_hr_, w_hz, w_hn = w_hh.chunk(3)
                        b_ir, b_iz, b_in = b_ih.chunk(3)
                        b_hr, b_hz, b_hn = b_hh.chunk(3)
                        a_r = w_ir @ xt + b_ir + w_hr_ @ h + b_hr
                        a_z = w_iz @ xt + b_iz + w_hz @ h + b_hz
                        r = 1 / (1 + torch.exp(-a_r))
                        z = 1 / (1 + torch.exp(-a_z))
                        a_n = w_in @ xt + b_in + r * (w_hn @ h + b_hn)
                        n = torch.tanh(a_n)
                        h = (1 - z) * n + z * h
                        values = {"r": r, "z": z, "n": n}
                        values["pre_activation"] = torch.cat((a_r, a_z, a_n))
                    else:
                        a = w_ih @ xt + b_ih + w_hh @ h + b_hh
                        h = torch.clamp(a, min=0) if relu else torch.tanh(a)
                        values = {"pre_activation": a}
                    values["h"] = h
                    for name, value in values.items():
                        fields[name][t, b] = value
            per_direction.append(fields)
        result.append(per_direction)
        layer_input = torch.cat([fields["h"] for fields in per_direction], dim=-1)
    return result


def assert_matches_expected(traced: Trace, expected, tolerance=1e-10):
    for layer, directions in enumerate(expected):
        for direction, fields in enumerate(directions):
            steps = traced[layer][direction]
            assert set(steps._fields) == set(fields), (layer, direction)
            for name, value in fields.items():
                actual = getattr(steps, name)
                assert actual.shape == value.shape, (layer, direction, name)
                torch.testing.assert_close(
                    actual,
                    value,
                    rtol=0,
                    atol=tolerance,
                    equal_nan=True,
                    msg=lambda text, n=name, k=layer, d=direction: (
                        f"field {n} of layer {k}, direction {d}: {text}"
                    ),
                )


def random_state(layer, batch, dtype=torch.float64):
    count = layer.num_layers * (2 if layer.bidirectional else 1)
    out_size = layer.proj_size or layer.hidden_size
    h0 = torch.randn(count, batch, out_size, dtype=dtype)
    c0 = torch.randn(count, batch, layer.hidden_size, dtype=dtype)
    return h0, c0


# Gate values against torch.nn weights.


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(MODES))
def test_gates_match_torch_weights(backend, mode):
    torch.manual_seed(1)
    reference, layer = make_pair(mode, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    h0, c0 = random_state(layer, 3)
    hx = (h0, c0) if layer.mode == "LSTM" else h0

    with use_backend(backend):
        traced = rnnkit.trace(layer, x, hx)

    assert_matches_expected(traced, expected_steps(reference, x, h0, c0))
    reference_output, _ = reference(x, hx)
    out_size = h0.shape[-1]
    torch.testing.assert_close(traced[1][0].h, reference_output[..., :out_size])
    torch.testing.assert_close(traced[1][1].h, reference_output[..., out_size:])


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_gates_match_torch_with_lengths(mode):
    torch.manual_seed(2)
    reference, layer = make_pair(mode, num_layers=2, bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = [6, 0, 2, 4]
    h0, c0 = random_state(layer, 4)
    hx = (h0, c0) if layer.mode == "LSTM" else h0

    traced = rnnkit.trace(layer, x, hx, lengths=lengths)

    assert_matches_expected(traced, expected_steps(reference, x, h0, c0, lengths))
    expected_valid = torch.arange(6)[:, None] < torch.tensor(lengths)[None, :]
    assert torch.equal(traced.valid, expected_valid)
    assert torch.isnan(traced[0][1].pre_activation[4:, 2]).all()
    assert torch.equal(traced[0][1].h[4:, 2], torch.zeros(2, 4, dtype=x.dtype))


def test_trace_fields_per_mode():
    torch.manual_seed(3)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    kinds = {"rnn_tanh": RNNSteps, "lstm": LSTMSteps, "gru": GRUSteps}
    for mode, kind in kinds.items():
        _, layer = make_pair(mode)
        traced = rnnkit.trace(layer, x)
        steps = traced[0][0]
        assert isinstance(steps, kind), mode
        for name in steps.gate_names:
            assert getattr(steps, name).shape[:2] == (4, 2), (mode, name)
    _, layer = make_pair("lstm_proj")
    steps = rnnkit.trace(layer, x)[0][0]
    assert steps.h.shape == (4, 2, 2)
    assert steps.c.shape == (4, 2, 4)
    assert steps.pre_activation.shape == (4, 2, 16)


def test_gates_recompose_layer_h_float32():
    # In float32 the recomputed gates must explain the kernel's h to rounding.
    torch.manual_seed(4)
    _, layer = make_pair("lstm", dtype=torch.float32)
    x = torch.randn(7, 2, 3)
    steps = rnnkit.trace(layer, x)[0][0]
    torch.testing.assert_close(steps.o * torch.tanh(steps.c), steps.h)

    _, layer = make_pair("gru", dtype=torch.float32)
    steps = rnnkit.trace(layer, x)[0][0]
    h_prev = torch.cat((torch.zeros(1, 2, 4), steps.h[:-1]))
    torch.testing.assert_close((1 - steps.z) * steps.n + steps.z * h_prev, steps.h)


# h against the layer's own output, bit for bit.


def input_forms(layer, steps=5, batch=3):
    """Yield (name, args, kwargs, output_as_time_major) for every input form."""
    dtype = layer.weight_ih_l0.dtype
    size = layer.input_size
    x = torch.randn(steps, batch, size, dtype=dtype)

    def same(output):
        return output

    def from_batch_first(output):
        return output.transpose(0, 1)

    def from_unbatched(output):
        return output.unsqueeze(1)

    def from_packed(output):
        return pad_packed_sequence(output)[0]

    if layer.batch_first:
        yield "batch_first", (x.transpose(0, 1),), {}, from_batch_first
        yield "lengths", (x.transpose(0, 1),), {"lengths": [5, 2, 0]}, from_batch_first
        return
    yield "padded", (x,), {}, same
    yield "unbatched", (x[:, 0],), {}, from_unbatched
    yield "lengths", (x,), {"lengths": torch.tensor([3, 5, 1])}, same
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 3]), enforce_sorted=False)
    yield "packed", (packed,), {}, from_packed
    h0, c0 = random_state(layer, batch, dtype)
    hx = (h0, c0) if layer.mode == "LSTM" else h0
    yield "hx", (x, hx), {}, same


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("batch_first", [False, True])
def test_traced_h_equals_layer_output(backend, mode, batch_first):
    torch.manual_seed(5)
    _, layer = make_pair(
        mode,
        dtype=torch.float32,
        num_layers=2,
        bidirectional=True,
        batch_first=batch_first,
    )
    out_size = layer.proj_size or layer.hidden_size
    for name, args, kwargs, time_major in input_forms(layer):
        with use_backend(backend):
            output, _ = layer(*args, **kwargs)
            traced = rnnkit.trace(layer, *args, **kwargs)
        output = time_major(output)
        assert torch.equal(traced[1][0].h, output[..., :out_size]), name
        assert torch.equal(traced[1][1].h, output[..., out_size:]), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_relu"])
def test_inner_layer_h_equals_shallower_layer(backend, mode):
    # Layer k of a deep layer runs what a (k + 1)-layer layer with the same
    # first weights runs, so its traced h must equal that layer's output.
    torch.manual_seed(6)
    _, deep = make_pair(mode, dtype=torch.float32, num_layers=3, bidirectional=True)
    x = torch.randn(6, 2, 3)
    lengths = [6, 3]
    with use_backend(backend):
        traced = rnnkit.trace(deep, x, lengths=lengths)
    out_size = deep.proj_size or deep.hidden_size

    for layers in (1, 2):
        kind, extra = MODES[mode]
        shallow = rnnkit.from_torch(
            kind(3, 4, num_layers=layers, bidirectional=True, **extra)
        )
        shallow.load_state_dict(
            {name: deep.state_dict()[name] for name in shallow.state_dict()}
        )
        with use_backend(backend):
            output, _ = shallow(x, lengths=lengths)
        inner = traced[layers - 1]
        assert torch.equal(inner[0].h, output[..., :out_size]), layers
        assert torch.equal(inner[1].h, output[..., out_size:]), layers


def test_trace_records_initial_state_and_inputs():
    torch.manual_seed(7)
    _, layer = make_pair("lstm", batch_first=True, num_layers=2)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    h0, c0 = random_state(layer, 2)
    traced = rnnkit.trace(layer, x, (h0, c0), lengths=[4, 2])
    assert torch.equal(traced.h0, h0)
    assert torch.equal(traced.c0, c0)
    assert torch.equal(traced.inputs[:, 0], x[0])
    assert torch.equal(traced.inputs[:2, 1], x[1, :2])
    assert torch.equal(traced.inputs[2:, 1], torch.zeros(2, 3, dtype=x.dtype))
    assert len(traced) == 2
    assert traced.num_directions == 1
    assert traced.mode == "LSTM"


def test_trace_all_lengths_zero():
    _, layer = make_pair("gru", bidirectional=True)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    traced = rnnkit.trace(layer, x, lengths=[0, 0])
    assert not traced.valid.any()
    assert torch.isnan(traced[0][1].z).all()
    assert torch.equal(traced[0][1].h, torch.zeros(3, 2, 4, dtype=x.dtype))


# Models built on rnnkit layers.


class TwoStageModel(nn.Module):
    """An LSTM encoder, a GRU called twice, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = rnnkit.LSTM(3, 4, batch_first=True, num_layers=2)
        self.decoder = rnnkit.GRU(4, 5, batch_first=True)
        self.head = nn.Linear(5, 1)

    def forward(self, x, scale=1.0):
        encoded, _ = self.encoder(x)
        decoded, h = self.decoder(encoded * scale)
        decoded, _ = self.decoder(encoded, h)
        return self.head(decoded[:, -1])


def test_model_trace_covers_each_layer_call():
    torch.manual_seed(8)
    model = TwoStageModel().eval()
    x = torch.randn(2, 5, 3)
    outputs = []
    hooks = [
        module.register_forward_hook(lambda m, a, out: outputs.append(out[0]))
        for module in (model.encoder, model.decoder)
    ]
    model(x, scale=0.5)
    for hook in hooks:
        hook.remove()

    traces = rnnkit.trace(model, x, scale=0.5)

    assert list(traces) == ["encoder", "decoder", "decoder#1"]
    for (name, traced), output in zip(traces.items(), outputs, strict=True):
        assert torch.equal(traced[-1][0].h, output.transpose(0, 1)), name
    assert traces["encoder"].mode == "LSTM"
    assert len(traces["encoder"]) == 2
    # The second decoder call starts from the state the first one ended in.
    assert torch.equal(traces["decoder#1"].h0[0], traces["decoder"][0][0].h[-1])


def test_model_trace_matches_torch_weights():
    torch.manual_seed(9)
    reference = nn.GRU(2, 3, dtype=torch.float64)
    model = nn.Sequential(rnnkit.from_torch(reference)).eval()
    x = torch.randn(4, 2, 2, dtype=torch.float64)
    traces = rnnkit.trace(model, x)
    assert list(traces) == ["0"]
    h0 = torch.zeros(1, 2, 3, dtype=torch.float64)
    assert_matches_expected(traces["0"], expected_steps(reference, x, h0))


# Invalid input.


def test_trace_rejects_non_module():
    with pytest.raises(TypeError, match="expected an rnnkit layer .* got Tensor"):
        rnnkit.trace(torch.zeros(3), torch.zeros(2, 3))


def test_trace_rejects_model_without_rnnkit_layers():
    model = nn.Sequential(nn.LSTM(3, 4))
    with pytest.raises(ValueError, match="has none; torch.nn recurrent layers"):
        rnnkit.trace(model, torch.zeros(2, 1, 3))


def test_trace_rejects_model_that_skips_its_layers():
    class Skipping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = rnnkit.RNN(3, 4)

        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="did not call any of its rnnkit layers"):
        rnnkit.trace(Skipping(), torch.zeros(2, 1, 3))


def test_trace_rejects_training_dropout():
    layer = rnnkit.LSTM(3, 4, num_layers=2, dropout=0.5)
    with pytest.raises(ValueError, match=r"training mode with dropout=0.5.*\.eval\(\)"):
        rnnkit.trace(layer, torch.zeros(2, 1, 3))
    layer.eval()
    assert len(rnnkit.trace(layer, torch.zeros(2, 1, 3))) == 2


def test_trace_rejects_model_keywords_for_layer():
    layer = rnnkit.GRU(3, 4)
    with pytest.raises(TypeError, match=r"apply to models only.*\['scale'\]"):
        rnnkit.trace(layer, torch.zeros(2, 1, 3), scale=2.0)


def test_trace_rejects_invalid_layer_input():
    layer = rnnkit.GRU(3, 4)
    with pytest.raises(ValueError, match="expected input with 3 features"):
        rnnkit.trace(layer, torch.zeros(2, 1, 5))
    with pytest.raises(TypeError, match="expected input to be a Tensor"):
        rnnkit.trace(layer, [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="lengths must not exceed"):
        rnnkit.trace(layer, torch.zeros(2, 1, 3), lengths=[3])
    packed = pack_padded_sequence(torch.zeros(2, 1, 3), torch.tensor([2]))
    with pytest.raises(ValueError, match="PackedSequence was given"):
        rnnkit.trace(layer, packed, lengths=[2])
    with pytest.raises(ValueError, match=r"expected h0 of shape \(1, 1, 4\)"):
        rnnkit.trace(layer, torch.zeros(2, 1, 3), torch.zeros(1, 1, 5))
