"""Conversion between ``torch.nn`` recurrent modules and rnnkit's, weights included."""

from __future__ import annotations

from torch import nn

from rnnkit import layers

_PAIRS = [
    (nn.RNN, layers.RNN),
    (nn.LSTM, layers.LSTM),
    (nn.GRU, layers.GRU),
    (nn.RNNCell, layers.RNNCell),
    (nn.LSTMCell, layers.LSTMCell),
    (nn.GRUCell, layers.GRUCell),
]


def from_torch(module: nn.Module) -> nn.Module:
    """Return the rnnkit layer or cell equivalent to a ``torch.nn`` one, same weights.

    The copy has the same configuration, device, dtype and training mode, and
    its parameters are copies: changing one module leaves the other as it is.
    """
    for torch_type, rnnkit_type in _PAIRS:
        if type(module) is torch_type:
            return _convert(module, rnnkit_type)
    supported = ", ".join(f"torch.nn.{t.__name__}" for t, _ in _PAIRS)
    raise TypeError(f"expected one of {supported}, got {type(module).__name__}")


def to_torch(module: nn.Module) -> nn.Module:
    """Return the ``torch.nn`` layer or cell equal to an rnnkit one, same weights."""
    for torch_type, rnnkit_type in _PAIRS:
        if type(module) is rnnkit_type:
            return _convert(module, torch_type)
    supported = ", ".join(f"rnnkit.{t.__name__}" for _, t in _PAIRS)
    raise TypeError(f"expected one of {supported}, got {type(module).__name__}")


def _convert(module: nn.Module, target: type[nn.Module]) -> nn.Module:
    weight = next(module.parameters())
    options = {
        "input_size": module.input_size,
        "hidden_size": module.hidden_size,
        "bias": module.bias,
        "device": weight.device,
        "dtype": weight.dtype,
    }
    if hasattr(module, "num_layers"):
        options.update(
            num_layers=module.num_layers,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
        if module.mode == "LSTM":
            options["proj_size"] = module.proj_size
    if getattr(module, "nonlinearity", None) is not None:
        options["nonlinearity"] = module.nonlinearity
    converted = target(**options)
    converted.load_state_dict(module.state_dict(), strict=True)
    converted.train(module.training)
    return converted
