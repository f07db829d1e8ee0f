"""Compatibility of rnnkit's layers and cells with torch.nn beyond the parity grid."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from parity import (
    TOLERANCE,
    compare_with_torch,
    make_inputs,
    make_torch_layer,
    run_with_gradients,
)

LAYER_PAIRS = [(nn.RNN, rnnkit.RNN), (nn.LSTM, rnnkit.LSTM), (nn.GRU, rnnkit.GRU)]
CELL_PAIRS = [
    (nn.RNNCell, rnnkit.RNNCell),
    (nn.LSTMCell, rnnkit.LSTMCell),
    (nn.GRUCell, rnnkit.GRUCell),
]


# Construction, parameters and conversion.


@pytest.mark.parametrize("torch_type, rnnkit_type", LAYER_PAIRS)
def test_same_seed_draws_same_weights(torch_type, rnnkit_type):
    options = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    expected = torch_type(**options).state_dict()
    torch.manual_seed(3)
    actual = rnnkit_type(**options).state_dict()
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def test_lstm_projection_parameter_shapes_match_torch():
    options = dict(input_size=3, hidden_size=6, num_layers=2, proj_size=2)
    expected = {k: v.shape for k, v in nn.LSTM(**options).state_dict().items()}
    actual = {k: v.shape for k, v in rnnkit.LSTM(**options).state_dict().items()}
    assert actual == expected
    assert actual["weight_hr_l1"] == (2, 6)
    assert actual["weight_ih_l1"] == (24, 2)


@pytest.mark.parametrize("torch_type, rnnkit_type", LAYER_PAIRS + CELL_PAIRS)
def test_state_dict_loads_both_ways_strict(torch_type, rnnkit_type):
    options = dict(input_size=3, hidden_size=4, bias=False)
    if torch_type not in (nn.RNNCell, nn.LSTMCell, nn.GRUCell):
        options.update(num_layers=2, bidirectional=True)
    source = torch_type(**options)
    target = rnnkit_type(**options)
    target.load_state_dict(source.state_dict(), strict=True)
    back = torch_type(**options)
    back.load_state_dict(target.state_dict(), strict=True)
    for name, value in source.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


@pytest.mark.parametrize("torch_type, rnnkit_type", LAYER_PAIRS + CELL_PAIRS)
def test_from_torch_and_to_torch_round_trip(torch_type, rnnkit_type):
    options = dict(input_size=3, hidden_size=4, dtype=torch.float64)
    source = torch_type(**options).eval()
    converted = rnnkit.from_torch(source)
    assert type(converted) is rnnkit_type
    assert not converted.training
    assert all(p.dtype == torch.float64 for p in converted.parameters())
    back = converted.to_torch()
    assert type(back) is torch_type
    for name, value in source.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    # The conversion copies: changing one module leaves the other alone.
    with torch.no_grad():
        next(converted.parameters()).add_(1.0)
    assert torch.equal(next(source.parameters()), next(back.parameters()))


def test_from_torch_keeps_rnn_nonlinearity_and_options():
    source = nn.RNN(2, 3, 2, nonlinearity="relu", batch_first=True, dropout=0.25)
    converted = rnnkit.from_torch(source)
    assert converted.nonlinearity == "relu"
    assert converted.batch_first is True
    assert converted.dropout == 0.25
    assert converted.num_layers == 2


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="expected one of torch.nn.RNN"):
        rnnkit.from_torch(nn.Linear(2, 3))
    with pytest.raises(TypeError, match="expected one of rnnkit.RNN"):
        rnnkit.to_torch(nn.Linear(2, 3))


@pytest.mark.parametrize(
    "options",
    [
        dict(input_size=10, hidden_size=20),
        dict(input_size=10, hidden_size=20, num_layers=2, bias=False, dropout=0.5),
        dict(input_size=1, hidden_size=2, batch_first=True, bidirectional=True),
    ],
)
@pytest.mark.parametrize("torch_type, rnnkit_type", LAYER_PAIRS)
def test_repr_matches_torch(torch_type, rnnkit_type, options):
    assert repr(rnnkit_type(**options)) == repr(torch_type(**options))


def test_repr_matches_torch_for_projection_relu_and_cells():
    assert repr(rnnkit.LSTM(3, 6, proj_size=2)) == repr(nn.LSTM(3, 6, proj_size=2))
    assert repr(rnnkit.RNN(3, 6, nonlinearity="relu")) == repr(
        nn.RNN(3, 6, nonlinearity="relu")
    )
    for torch_type, rnnkit_type in CELL_PAIRS:
        assert repr(rnnkit_type(3, 4, bias=False)) == repr(torch_type(3, 4, bias=False))
    assert repr(rnnkit.RNNCell(3, 4, nonlinearity="relu")) == repr(
        nn.RNNCell(3, 4, nonlinearity="relu")
    )


@pytest.mark.parametrize("torch_type, rnnkit_type", LAYER_PAIRS)
def test_all_weights_and_flatten_parameters(torch_type, rnnkit_type):
    options = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    expected = [
        [tuple(w.shape) for w in ws] for ws in torch_type(**options).all_weights
    ]
    layer = rnnkit_type(**options)
    assert [[tuple(w.shape) for w in ws] for ws in layer.all_weights] == expected
    assert all(isinstance(w, nn.Parameter) for ws in layer.all_weights for w in ws)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    assert layer.flatten_parameters() is None
    for name, value in layer.state_dict().items():
        assert torch.equal(value, before[name])


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        rnnkit.GRU(2, 3, dropout=0.3)


# Dropout between layers.


@pytest.mark.parametrize("form", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_dropout_matches_torch_with_fixed_generator(kind, form):
    options = dict(input_size=4, hidden_size=6, num_layers=3, dropout=0.4)
    torch_layer = make_torch_layer(kind, torch.float64, bidirectional=True, **options)
    rnnkit_layer = rnnkit.from_torch(torch_layer)

    value, leaves, hx = make_inputs(torch_layer, form, with_state=True)
    torch.manual_seed(11)
    expected = run_with_gradients(torch_layer, value, leaves, hx)
    value, leaves, hx = make_inputs(torch_layer, form, with_state=True)
    torch.manual_seed(11)
    actual = run_with_gradients(rnnkit_layer, value, leaves, hx)
    for name, tensor in expected.items():
        if tensor is not None:
            torch.testing.assert_close(actual[name], tensor, rtol=1e-10, atol=1e-10)


def test_dropout_is_off_in_eval_mode():
    layer = rnnkit.LSTM(3, 5, num_layers=2, dropout=0.9).eval()
    x = torch.randn(4, 2, 3)
    first, _ = layer(x)
    second, _ = layer(x)
    assert torch.equal(first, second)


def test_dropout_changes_training_outputs():
    layer = rnnkit.GRU(3, 5, num_layers=2, dropout=0.5).train()
    x = torch.randn(4, 2, 3)
    torch.manual_seed(0)
    first, _ = layer(x)
    torch.manual_seed(1)
    second, _ = layer(x)
    assert not torch.equal(first, second)


# Gradients.


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_gradcheck_float64(kind):
    options = dict(input_size=2, hidden_size=3, num_layers=2, bidirectional=True)
    if kind == "lstm":
        options["proj_size"] = 2
    layer = rnnkit.from_torch(make_torch_layer(kind, torch.float64, **options))
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    out_size = 2 if kind == "lstm" else 3
    h0 = torch.randn(4, 2, out_size, dtype=torch.float64, requires_grad=True)
    inputs = [x, h0]
    if kind == "lstm":
        inputs.append(torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True))

    def run(x, h0, *rest):
        hx = (h0, rest[0]) if rest else h0
        output, state = layer(x, hx)
        states = state if isinstance(state, tuple) else (state,)
        return (output, *states)

    assert torch.autograd.gradcheck(run, inputs)


def test_gradients_in_eval_mode():
    layer = rnnkit.GRU(3, 4).eval()
    x = torch.randn(5, 2, 3, requires_grad=True)
    layer(x)[0].sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()


# Input forms not covered by the parity grid.


def test_packed_output_keeps_caller_order_and_indices():
    torch_layer = nn.LSTM(2, 3)
    layer = rnnkit.from_torch(torch_layer)
    x = torch.randn(4, 3, 2)
    packed = pack_padded_sequence(x, torch.tensor([2, 4, 1]), enforce_sorted=False)
    output, (h_n, _) = layer(packed)
    expected, (expected_h, _) = torch_layer(packed)
    assert torch.equal(output.sorted_indices, expected.sorted_indices)
    assert torch.equal(output.unsorted_indices, expected.unsorted_indices)
    assert torch.equal(output.batch_sizes, expected.batch_sizes)
    torch.testing.assert_close(
        h_n, expected_h, rtol=TOLERANCE[torch.float32], atol=1e-5
    )


def test_batch_first_keeps_h0_time_independent_layout():
    compare_with_torch(
        "gru", torch.float32, "padded", True, False,
        input_size=4, hidden_size=6, num_layers=2, batch_first=True,
    )  # fmt: skip


def test_float64_layer_with_float64_input():
    layer = rnnkit.RNN(2, 3, dtype=torch.float64)
    output, h_n = layer(torch.randn(4, 1, 2, dtype=torch.float64))
    assert output.dtype == torch.float64
    assert h_n.dtype == torch.float64


# Cells.


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("torch_type, rnnkit_type", CELL_PAIRS)
def test_cell_matches_torch(torch_type, rnnkit_type, dtype, with_state, batched):
    torch.manual_seed(0)
    torch_cell = torch_type(3, 4, dtype=dtype)
    cell = rnnkit.from_torch(torch_cell)
    shape = (2, 3) if batched else (3,)
    state_shape = (2, 4) if batched else (4,)
    tolerance = TOLERANCE[dtype]

    def run(module):
        generator = torch.Generator().manual_seed(5)
        x = torch.randn(shape, generator=generator, dtype=dtype, requires_grad=True)
        leaves = [x]
        hx = None
        if with_state:
            count = 2 if torch_type is nn.LSTMCell else 1
            states = [
                torch.randn(
                    state_shape, generator=generator, dtype=dtype
                ).requires_grad_(True)
                for _ in range(count)
            ]
            leaves += states
            hx = tuple(states) if count == 2 else states[0]
        result = module(x, hx)
        results = result if isinstance(result, tuple) else (result,)
        loss = sum((r * torch.arange(r.numel()).view(r.shape)).sum() for r in results)
        parameters = [p for _, p in sorted(module.named_parameters())]
        return list(results) + list(torch.autograd.grad(loss, leaves + parameters))

    for actual, expected in zip(run(cell), run(torch_cell), strict=True):
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)


def test_relu_cell_matches_torch():
    torch_cell = nn.RNNCell(3, 4, nonlinearity="relu", bias=False)
    cell = rnnkit.from_torch(torch_cell)
    x = torch.randn(5, 3)
    h = torch.randn(5, 4)
    torch.testing.assert_close(cell(x, h), torch_cell(x, h))


# Bad input.


@pytest.mark.parametrize("rnnkit_type", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU])
def test_input_of_wrong_rank_is_rejected(rnnkit_type):
    layer = rnnkit_type(3, 4)
    with pytest.raises(ValueError, match=r"expected input of 3 dimensions .* got 4"):
        layer(torch.zeros(2, 2, 2, 3))
    with pytest.raises(ValueError, match=r"got 1 dimensions"):
        layer(torch.zeros(3))


def test_input_with_wrong_feature_size_is_rejected():
    layer = rnnkit.GRU(3, 4)
    with pytest.raises(
        ValueError, match=r"expected input with 3 features.*\(4, 5, 2\)"
    ):
        layer(torch.zeros(4, 5, 2))


def test_packed_input_with_wrong_feature_size_is_rejected():
    layer = rnnkit.LSTM(3, 4)
    packed = pack_padded_sequence(torch.zeros(4, 2, 5), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="expected input with 3 features"):
        layer(packed)


def test_input_that_is_not_a_tensor_is_rejected():
    with pytest.raises(TypeError, match="expected input to be a Tensor or a Packed"):
        rnnkit.RNN(1, 2)([[0.1], [0.2]])


def test_h0_of_wrong_shape_is_rejected():
    layer = rnnkit.GRU(3, 4, num_layers=2)
    x = torch.zeros(5, 6, 3)
    with pytest.raises(
        ValueError, match=r"expected h0 of shape \(2, 6, 4\).*\(2, 5, 4\)"
    ):
        layer(x, torch.zeros(2, 5, 4))
    with pytest.raises(
        ValueError, match=r"expected h0 of shape \(2, 6, 4\).*\(1, 6, 4\)"
    ):
        layer(x, torch.zeros(1, 6, 4))


def test_lstm_c0_of_wrong_shape_is_rejected():
    layer = rnnkit.LSTM(3, 4, proj_size=2)
    x = torch.zeros(5, 6, 3)
    with pytest.raises(ValueError, match=r"expected c0 of shape \(1, 6, 4\)"):
        layer(x, (torch.zeros(1, 6, 2), torch.zeros(1, 6, 2)))
    with pytest.raises(ValueError, match=r"expected h0 of shape \(1, 6, 2\)"):
        layer(x, (torch.zeros(1, 6, 4), torch.zeros(1, 6, 4)))


def test_lstm_hx_that_is_not_a_pair_is_rejected():
    layer = rnnkit.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"expected hx=\(h0, c0\)"):
        layer(torch.zeros(5, 6, 3), torch.zeros(1, 6, 4))


def test_unbatched_input_with_batched_h0_is_rejected():
    layer = rnnkit.RNN(3, 4)
    with pytest.raises(
        ValueError, match=r"expected h0 of shape \(1, 4\) for unbatched"
    ):
        layer(torch.zeros(5, 3), torch.zeros(1, 1, 4))


def test_input_dtype_differing_from_parameters_is_rejected():
    layer = rnnkit.LSTM(3, 4)
    with pytest.raises(
        TypeError, match=r"expected input of dtype torch.float32.*float64"
    ):
        layer(torch.zeros(5, 2, 3, dtype=torch.float64))


def test_integer_input_error_suggests_converting_input_only():
    layer = rnnkit.LSTM(3, 4)
    with pytest.raises(TypeError) as error:
        layer(torch.ones(2, 5, 3, dtype=torch.long))
    message = str(error.value)
    assert "got torch.int64" in message
    assert message.endswith("convert the input with .to(torch.float32)")


def test_state_dtype_differing_from_input_is_rejected():
    layer = rnnkit.GRU(3, 4)
    h0 = torch.zeros(1, 2, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"expected h0 of dtype torch.float32.*float64"):
        layer(torch.zeros(5, 2, 3), h0)


def test_state_device_differing_from_input_is_rejected():
    layer = rnnkit.GRU(3, 4)
    h0 = torch.zeros(1, 2, 4, device="meta")
    with pytest.raises(ValueError, match=r"expected h0 on device cpu.*meta"):
        layer(torch.zeros(5, 2, 3), h0)


def test_input_device_differing_from_parameters_is_rejected():
    layer = rnnkit.RNN(3, 4)
    with pytest.raises(ValueError, match=r"expected input on device cpu.*meta"):
        layer(torch.zeros(5, 2, 3, device="meta"))


def test_unknown_nonlinearity_is_rejected():
    with pytest.raises(
        ValueError, match=r"expected nonlinearity 'tanh' or 'relu'.*'gelu'"
    ):
        rnnkit.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="expected nonlinearity"):
        rnnkit.RNNCell(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("proj_size, message", [(-1, "proj_size >= 0"), (4, "smaller")])
def test_proj_size_out_of_range_is_rejected(proj_size, message):
    with pytest.raises(ValueError, match=message):
        rnnkit.LSTM(3, 4, proj_size=proj_size)


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(hidden_size=0), ValueError, "hidden_size greater than zero, got 0"),
        (dict(num_layers=0), ValueError, "num_layers greater than zero"),
        (dict(hidden_size=2.5), TypeError, "hidden_size of type int, got float"),
        (dict(dropout=1.5), ValueError, r"dropout to be a probability in \[0, 1\]"),
        (dict(bias="yes"), TypeError, "bias of type bool, got str"),
        (dict(batch_first=1), TypeError, "batch_first of type bool, got int"),
    ],
)
def test_invalid_constructor_arguments_are_rejected(options, error, message):
    arguments = dict(input_size=3, hidden_size=4) | options
    with pytest.raises(error, match=message):
        rnnkit.GRU(**arguments)


def test_cell_bad_inputs_are_rejected():
    cell = rnnkit.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"expected input with 3 features.*\(2, 5\)"):
        cell(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="expected input of 2 dimensions"):
        cell(torch.zeros(1, 2, 3))
    with pytest.raises(
        ValueError, match=r"expected hx of shape \(2, 4\), got \(3, 4\)"
    ):
        cell(torch.zeros(2, 3), (torch.zeros(3, 4), torch.zeros(3, 4)))
    with pytest.raises(TypeError, match="expected input of dtype torch.float32"):
        cell(torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("torch_type", [nn.RNN, nn.LSTM, nn.GRU])
def test_empty_batch_matches_torch(torch_type):
    torch_layer = torch_type(4, 3, num_layers=2, bidirectional=True, batch_first=True)
    layer = rnnkit.from_torch(torch_layer)
    x = torch.zeros(0, 5, 4)
    expected, expected_state = torch_layer(x)
    output, state = layer(x)
    assert output.shape == expected.shape == (0, 5, 6)
    expected_states = (
        expected_state if isinstance(expected_state, tuple) else (expected_state,)
    )
    states = state if isinstance(state, tuple) else (state,)
    for actual, reference in zip(states, expected_states, strict=True):
        assert actual.shape == reference.shape


def test_zero_steps_return_initial_state():
    # torch.nn raises for T = 0; rnnkit returns an empty output and h0.
    layer = rnnkit.GRU(4, 3)
    h0 = torch.randn(1, 2, 3)
    output, h_n = layer(torch.zeros(0, 2, 4), h0)
    assert output.shape == (0, 2, 3)
    assert torch.equal(h_n, h0)
