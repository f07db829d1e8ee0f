"""The recurrent forecaster: one recurrent layer stack and a linear head.

Shapes: B batch, T context length, F input columns, H hidden size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from rnnkit import GRU, LSTM, RNN

CELL_KINDS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a ``Forecaster`` before loading its weights."""

    cell: str
    input_size: int
    horizon: int
    strategy: str = "direct"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    # The regularisers of rnnkit's layers, active in training only.
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    weight_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Forecaster(nn.Module):
    """Forecast the target (column 0) of a scaled window of F columns.

    With the "direct" strategy the head emits the whole horizon at once:
    (B, T, F) -> (B, horizon). With "recursive" it emits every column one step
    ahead, (B, T, F) -> (B, F), and ``forecast`` feeds each step back in.

    The head predicts the change from the last observed value, not the value
    itself. Trending series leave the range seen in training, and an offset
    from the last value carries over to a new level where an absolute output
    would not.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.cell not in CELL_KINDS:
            raise ValueError(
                f"unknown cell kind {config.cell!r}: expected one of "
                f"{', '.join(CELL_KINDS)}"
            )
        self.config = config
        # Inter-layer dropout only exists between stacked layers.
        dropout = config.dropout if config.num_layers > 1 else 0.0
        self.recurrent = CELL_KINDS[config.cell](
            input_size=config.input_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=dropout,
            batch_first=True,
            recurrent_dropout=config.recurrent_dropout,
            zoneout=config.zoneout,
            weight_dropout=config.weight_dropout,
        )
        outputs = config.horizon if config.strategy == "direct" else config.input_size
        self.head = nn.Linear(config.hidden_size, outputs)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.recurrent(x)  # output: (B, T, H)
        change = self.head(output[:, -1])
        if self.config.strategy == "direct":
            return x[:, -1, :1] + change
        return x[:, -1, :] + change

    @torch.no_grad()
    def forecast(self, x: Tensor, horizon: int) -> Tensor:
        """Forecast ``horizon`` steps of the target from windows x: (B, T, F).

        Returns (B, horizon) in scaled units. A direct model can forecast at
        most the horizon it was trained for.
        """
        if self.config.strategy == "direct":
            if horizon > self.config.horizon:
                raise ValueError(
                    f"this model was trained to forecast {self.config.horizon} "
                    f"steps, but {horizon} were requested; train it with "
                    f"--horizon {horizon}, or with --strategy recursive"
                )
            return self(x)[:, :horizon]

        steps = []
        window = x
        for _ in range(horizon):
            step = self(window)  # (B, F)
            steps.append(step[:, 0])
            window = torch.cat([window[:, 1:], step[:, None, :]], dim=1)
        return torch.stack(steps, dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
