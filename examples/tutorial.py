"""Recurrent layers in five minutes, with rnnkit in place of torch.nn.

Run it with ``python examples/tutorial.py``. Each layer has input_size=1,
hidden_size=2 and batch_first=True, so a batch of one sequence of three steps,
one feature each, is a tensor of shape (1, 3, 1).
"""

import torch

import rnnkit

x = torch.tensor([[[0.1], [0.2], [0.3]]])

for layer_type in (rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU):
    torch.manual_seed(0)
    layer = layer_type(input_size=1, hidden_size=2, batch_first=True)
    print(layer)

    # The initial state is (num_layers * directions, batch, hidden) even with
    # batch_first=True. An LSTM takes a pair: the hidden state h and the cell
    # state c.
    h0 = torch.zeros(1, 1, 2)
    state = (h0, torch.zeros(1, 1, 2)) if layer_type is rnnkit.LSTM else h0

    with torch.no_grad():
        for call in ("from a zero state", "from the returned state"):
            # output is h at every step, (1, 3, 2), and state is the last step's.
            output, state = layer(x, state)
            h_n, c_n = state if isinstance(state, tuple) else (state, None)
            print(f"  {call}")
            print(f"    output: {output.tolist()}")
            print(f"    h_n: {h_n.tolist()}")
            if c_n is not None:
                print(f"    c_n: {c_n.tolist()}")
