"""``lengths=`` on right-padded input, against per-row runs and torch.nn packing.

The oracles: each row run alone over its valid steps by the same rnnkit layer,
and the ``torch.nn`` layer with the same weights fed a ``PackedSequence``.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from parity import make_torch_layer

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
STEPS, BATCH, FEATURES, HIDDEN = 6, 4, 3, 5
LENGTHS = [4, 6, 0, 2]


def make_layers(kind, num_layers=2, bidirectional=True, **options):
    torch_layer = make_torch_layer(
        kind,
        torch.float64,
        input_size=FEATURES,
        hidden_size=HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        **options,
    )
    return torch_layer, rnnkit.from_torch(torch_layer)


def make_padded(batch_first=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (BATCH, STEPS, FEATURES) if batch_first else (STEPS, BATCH, FEATURES)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def make_state(layer, seed=1):
    generator = torch.Generator().manual_seed(seed)
    directions = 2 if layer.bidirectional else 1
    out_size = getattr(layer, "proj_size", 0) or layer.hidden_size
    shape = (layer.num_layers * directions, BATCH, out_size)
    h0 = torch.randn(shape, generator=generator, dtype=torch.float64)
    if layer.mode == "LSTM":
        c_shape = shape[:-1] + (layer.hidden_size,)
        return h0, torch.randn(c_shape, generator=generator, dtype=torch.float64)
    return h0


def states_of(result):
    """Return the final states of a layer call as a tuple of tensors."""
    return result if isinstance(result, tuple) else (result,)


def row_of_state(hx, row):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(s[:, row : row + 1] for s in hx)
    return hx[:, row : row + 1]


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_lengths_match_each_row_alone(kind, with_state):
    _, layer = make_layers(kind)
    x = make_padded()
    hx = make_state(layer) if with_state else None

    output, final = layer(x, hx, lengths=LENGTHS)
    finals = states_of(final)

    for row, length in enumerate(LENGTHS):
        row_hx = row_of_state(hx, row)
        if length == 0:
            expected_final = row_hx if with_state else None
            for index, state in enumerate(finals):
                if expected_final is None:
                    assert torch.all(state[:, row] == 0), f"row {row} state {index}"
                else:
                    torch.testing.assert_close(
                        state[:, row : row + 1], states_of(expected_final)[index]
                    )
            assert torch.all(output[:, row] == 0), f"row {row} output"
            continue
        alone_output, alone_final = layer(x[:length, row : row + 1], row_hx)
        torch.testing.assert_close(output[:length, row : row + 1], alone_output)
        for state, alone_state in zip(finals, states_of(alone_final), strict=True):
            torch.testing.assert_close(state[:, row : row + 1], alone_state)


def test_lengths_outputs_past_length_are_zero():
    _, layer = make_layers("lstm")
    x = make_padded()
    output, _ = layer(x, lengths=LENGTHS)
    for row, length in enumerate(LENGTHS):
        assert torch.all(output[length:, row] == 0), f"row {row}"
        if length > 0:
            assert torch.all(output[:length, row] != 0), f"row {row}"


def test_lengths_reverse_starts_at_own_last_step():
    # Changing the padding of a row must not change its reverse direction.
    _, layer = make_layers("gru", num_layers=1)
    x = make_padded()
    noisy = x.clone()
    for row, length in enumerate(LENGTHS):
        noisy[length:, row] = 100.0
    output, h_n = layer(x, lengths=LENGTHS)
    noisy_output, noisy_h_n = layer(noisy, lengths=LENGTHS)
    torch.testing.assert_close(noisy_output, output)
    torch.testing.assert_close(noisy_h_n, h_n)

    # The reverse direction's output at step 0 is its final state.
    row = 0
    reverse_alone = torch.flip(x[: LENGTHS[row], row : row + 1], dims=[0])
    weights = {
        name.replace("_reverse", ""): value
        for name, value in layer.named_parameters()
        if name.endswith("_reverse")
    }
    forward_only = rnnkit.GRU(FEATURES, HIDDEN, dtype=torch.float64)
    forward_only.load_state_dict(weights)
    _, reverse_h_n = forward_only(reverse_alone)
    torch.testing.assert_close(h_n[1, row], reverse_h_n[0, 0])
    torch.testing.assert_close(output[0, row, HIDDEN:], reverse_h_n[0, 0])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_lengths_match_torch_packed(kind, batch_first):
    lengths = [4, 6, 1, 2]
    options = {"batch_first": batch_first}
    if kind == "lstm":
        options["proj_size"] = 2
    torch_layer, layer = make_layers(kind, **options)
    x = make_padded(batch_first).requires_grad_(True)
    hx = make_state(layer)

    packed = pack_padded_sequence(
        x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
    )
    expected_packed, expected_final = torch_layer(packed, hx)
    expected_output, _ = pad_packed_sequence(
        expected_packed, batch_first=batch_first, total_length=STEPS
    )
    output, final = layer(x, hx, lengths=lengths)

    torch.testing.assert_close(output, expected_output)
    for state, expected in zip(
        states_of(final), states_of(expected_final), strict=True
    ):
        torch.testing.assert_close(state, expected)

    # Gradients flow to the input the same way.
    (expected_grad,) = torch.autograd.grad(expected_output.sum(), x)
    (grad,) = torch.autograd.grad(output.sum(), x)
    torch.testing.assert_close(grad, expected_grad)


def test_lengths_as_tensor_equal_list():
    _, layer = make_layers("lstm")
    x = make_padded()
    from_list, _ = layer(x, lengths=LENGTHS)
    from_tensor, _ = layer(x, lengths=torch.tensor(LENGTHS))
    from_int32, _ = layer(x, lengths=torch.tensor(LENGTHS, dtype=torch.int32))
    torch.testing.assert_close(from_tensor, from_list)
    torch.testing.assert_close(from_int32, from_list)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_lengths_on_any_device_match_cpu_list(device):
    _, layer = make_layers("gru")
    x = make_padded()
    expected, expected_h_n = layer(x, lengths=LENGTHS)
    layer = layer.to(device)
    for lengths in (torch.tensor(LENGTHS, device=device), torch.tensor(LENGTHS)):
        output, h_n = layer(x.to(device), lengths=lengths)
        torch.testing.assert_close(output.cpu(), expected)
        torch.testing.assert_close(h_n.cpu(), expected_h_n)


def test_lengths_all_zero_return_initial_state():
    _, layer = make_layers("lstm")
    x = make_padded()
    hx = make_state(layer)
    output, (h_n, c_n) = layer(x, hx, lengths=[0] * BATCH)
    assert torch.all(output == 0)
    torch.testing.assert_close(h_n, hx[0])
    torch.testing.assert_close(c_n, hx[1])


def test_lengths_full_equal_no_lengths():
    torch_layer, layer = make_layers("gru")
    x = make_padded()
    expected, expected_h_n = torch_layer(x)
    output, h_n = layer(x, lengths=[STEPS] * BATCH)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(h_n, expected_h_n)


@pytest.mark.parametrize(
    ("lengths", "error", "message"),
    [
        ([4, 7, 0, 2], ValueError, "must not exceed the sequence length T=6"),
        ([4, -1, 0, 2], ValueError, "non-negative"),
        ([4, 6, 2], ValueError, r"expected lengths of shape \(4,\)"),
        ([[4, 6, 0, 2]], ValueError, r"expected lengths of shape \(4,\)"),
        (torch.tensor([4.0, 6.0, 0.0, 2.0]), TypeError, "integer dtype"),
        ([4.0, 6.0, 0.0, 2.0], TypeError, "integer dtype"),
        ([True, True, False, True], TypeError, "integer dtype"),
        (4, TypeError, "expected lengths as a list"),
    ],
    ids=[
        "too_long",
        "negative",
        "wrong_batch",
        "two_dims",
        "float_tensor",
        "floats",
        "bools",
        "scalar",
    ],  # fmt: skip
)
def test_lengths_bad_input_raises(lengths, error, message):
    _, layer = make_layers("gru")
    with pytest.raises(error, match=message):
        layer(make_padded(), lengths=lengths)


def test_lengths_with_packed_input_raises():
    _, layer = make_layers("gru")
    packed = pack_padded_sequence(make_padded(), torch.tensor([6, 4, 2, 1]))
    with pytest.raises(ValueError, match="PackedSequence"):
        layer(packed, lengths=[6, 4, 2, 1])


def test_torch_rejects_zero_length():
    # The reason lengths= exists beside packing: torch.nn cannot pack a zero.
    with pytest.raises(RuntimeError):
        pack_padded_sequence(make_padded(), torch.tensor(LENGTHS), enforce_sorted=False)
