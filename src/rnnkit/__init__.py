"""rnnkit: RNN, LSTM and GRU layers from their equations, drop-in for torch.nn."""

from rnnkit.convert import from_torch, to_torch
from rnnkit.kernels.backend import get_backend, set_backend, use_backend
from rnnkit.layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from rnnkit.minimal import MinGRU, MinLSTM
from rnnkit.norm import LayerNormGRU, LayerNormLSTM
from rnnkit.streaming import Streaming
from rnnkit.trace import trace

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "LayerNormGRU",
    "LayerNormLSTM",
    "MinGRU",
    "MinLSTM",
    "RNN",
    "RNNCell",
    "Streaming",
    "from_torch",
    "get_backend",
    "set_backend",
    "to_torch",
    "use_backend",
    "trace",
    "__version__",
]
