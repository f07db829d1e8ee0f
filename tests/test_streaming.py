"""``rnnkit.Streaming``: chunked calls against one call over the whole sequence.

The oracle is the same layer run once over the full sequence, or once over
the rows or steps in question, from the initial state that the definition gives.
"""

from pathlib import Path

import pandas as pd
import pytest
import torch

import rnnkit
from rnnkit.streaming import Streaming

STEPS, BATCH, FEATURES, HIDDEN = 10, 3, 4, 5
DTYPE = torch.float64


def make_layer(kind, **options):
    torch.manual_seed(0)
    if kind == "lstm_proj":
        return rnnkit.LSTM(FEATURES, HIDDEN, proj_size=2, dtype=DTYPE, **options)
    layer_type = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[kind]
    return layer_type(FEATURES, HIDDEN, dtype=DTYPE, **options)


def make_input(batch_first=False, steps=STEPS, batch=BATCH, seed=1):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, steps, FEATURES) if batch_first else (steps, batch, FEATURES)
    return torch.randn(shape, generator=generator, dtype=DTYPE)


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "lstm_proj", "gru"])
def test_chunks_equal_one_call(kind, batch_first):
    layer = make_layer(kind, num_layers=2, batch_first=batch_first)
    x = make_input(batch_first)
    expected, expected_final = layer(x)

    stream = Streaming(layer)
    time_axis = 1 if batch_first else 0
    outputs = [stream(chunk) for chunk in x.split([1, 3, 2, 4], dim=time_axis)]

    torch.testing.assert_close(torch.cat(outputs, dim=time_axis), expected)
    for state, expected_state in zip(
        as_tuple(stream.state), as_tuple(expected_final), strict=True
    ):
        torch.testing.assert_close(state, expected_state)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_step_equals_one_call(kind):
    layer = make_layer(kind, num_layers=2)
    x = make_input()
    expected, _ = layer(x)

    stream = Streaming(layer)
    outputs = [stream.step(x[t]) for t in range(STEPS)]

    torch.testing.assert_close(torch.stack(outputs), expected)


def test_step_unbatched_and_batch_first():
    layer = make_layer("gru", batch_first=True)
    x = make_input(batch_first=True)
    expected, _ = layer(x)

    stream = Streaming(layer)
    outputs = [stream.step(x[:, t]) for t in range(STEPS)]
    torch.testing.assert_close(torch.stack(outputs, dim=1), expected)

    unbatched = Streaming(layer)
    outputs = [unbatched.step(x[0, t]) for t in range(STEPS)]
    torch.testing.assert_close(torch.stack(outputs), expected[0])


def test_state_is_detached_between_calls():
    layer = make_layer("lstm")
    first = make_input(steps=4).requires_grad_(True)
    second = make_input(steps=3, seed=2).requires_grad_(True)
    stream = Streaming(layer)

    stream(first)
    assert not any(s.requires_grad for s in stream.state)
    stream(second).sum().backward()

    assert first.grad is None
    assert second.grad is not None
    assert layer.weight_hh_l0.grad is not None


def test_reset_restarts_from_zero():
    layer = make_layer("gru")
    x = make_input()
    stream = Streaming(layer)
    stream(x[:4])
    stream.reset()
    output = stream(x[4:])
    expected, _ = layer(x[4:])
    torch.testing.assert_close(output, expected)


def test_reset_rows_restarts_only_those_rows():
    layer = make_layer("lstm", num_layers=2)
    x = make_input()
    whole, _ = layer(x)
    fresh, _ = layer(x[4:])

    stream = Streaming(layer)
    stream(x[:4])
    output = stream(x[4:], reset_rows=torch.tensor([True, False, True]))

    torch.testing.assert_close(output[:, 0], fresh[:, 0])
    torch.testing.assert_close(output[:, 1], whole[4:, 1])
    torch.testing.assert_close(output[:, 2], fresh[:, 2])


def test_reset_rows_as_list():
    layer = make_layer("gru")
    x = make_input()
    fresh, _ = layer(x[4:])
    stream = Streaming(layer)
    stream(x[:4])
    stream.reset([False, True, False])
    output = stream(x[4:])
    torch.testing.assert_close(output[:, 1], fresh[:, 1])


def test_lengths_carry_last_valid_state():
    # Row 1 has no valid step in the first chunk, so it starts the second
    # chunk from zero, and row 2 continues from its step 2.
    layer = make_layer("gru")
    x = make_input()
    stream = Streaming(layer)
    stream(x[:4], lengths=[4, 0, 2])
    output = stream(x[4:])

    whole, _ = layer(x)
    torch.testing.assert_close(output[:, 0], whole[4:, 0])
    row_1, _ = layer(x[4:, 1:2])
    torch.testing.assert_close(output[:, 1:2], row_1)
    row_2, _ = layer(torch.cat([x[:2, 2:3], x[4:, 2:3]]))
    torch.testing.assert_close(output[:, 2:3], row_2[2:])


def test_training_on_chunks_updates_layer():
    # Truncated backpropagation through time on the airline series.
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    series = pd.read_csv(data / "airline-passengers.csv").iloc[:, 1].to_numpy()
    values = torch.tensor((series - series.mean()) / series.std(), dtype=DTYPE)
    inputs = values[:-1].view(-1, 1, 1)
    targets = values[1:].view(-1, 1, 1)

    torch.manual_seed(0)
    layer = rnnkit.GRU(1, 8, dtype=DTYPE)
    head = torch.nn.Linear(8, 1, dtype=DTYPE)
    parameters = [*layer.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=0.02)

    def epoch_loss(train):
        stream = Streaming(layer)
        total = 0.0
        for x, y in zip(inputs.split(24), targets.split(24), strict=True):
            loss = torch.nn.functional.mse_loss(head(stream(x)), y)
            if train:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total += loss.item() * len(x)
        return total / len(inputs)

    before = epoch_loss(train=False)
    for _ in range(15):
        epoch_loss(train=True)
    after = epoch_loss(train=False)
    assert after < 0.5 * before


def test_batch_size_change_raises():
    stream = Streaming(make_layer("gru"))
    stream(make_input(steps=2))
    with pytest.raises(ValueError, match="expected a batch of 3 .* got a batch of 2"):
        stream(make_input(steps=2, batch=2))
    with pytest.raises(ValueError, match="got unbatched input"):
        stream.step(make_input(steps=1)[0, 0])

    stream.reset()
    assert stream(make_input(steps=2, batch=2)).shape == (2, 2, HIDDEN)


def test_bad_reset_rows_raise():
    stream = Streaming(make_layer("gru"))
    stream(make_input(steps=2))
    with pytest.raises(TypeError, match="bool mask"):
        stream.reset(torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"expected rows of shape \(3,\)"):
        stream.reset(torch.tensor([True, False]))


def test_bidirectional_layer_raises():
    with pytest.raises(ValueError, match="expected a unidirectional layer"):
        Streaming(make_layer("gru", bidirectional=True))


def test_bad_step_input_raises():
    stream = Streaming(make_layer("gru"))
    with pytest.raises(ValueError, match="expected one step of input"):
        stream.step(make_input())
    with pytest.raises(TypeError, match="expected a recurrent layer"):
        Streaming(lambda x: x)
