"""The networks of the text tasks, built on rnnkit's recurrent layers.

Shapes: T time, B batch, V vocabulary size, E embedding size, H hidden size,
L layers, C classes, F features per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

import rnnkit

CELLS = ("lstm", "gru", "rnn")


def build_recurrent(
    cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float, **kw
) -> nn.Module:
    """Return an rnnkit ``LSTM``, ``GRU`` or ``RNN`` (tanh) layer."""
    if cell not in CELLS:
        raise ValueError(f"expected a cell kind in {CELLS}, got {cell!r}")
    layer = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}[cell]
    # A single layer has nothing between layers to drop, and rnnkit warns then.
    dropout = dropout if num_layers > 1 else 0.0
    return layer(input_size, hidden_size, num_layers, dropout=dropout, **kw)


def check_config(cell: str, dropout: float, **sizes: int) -> None:
    """Raise ``ValueError`` for an unknown cell, a size below 1 or a bad dropout."""
    if cell not in CELLS:
        raise ValueError(f"expected a cell kind in {CELLS}, got {cell!r}")
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"expected {name} of at least 1, got {value}")
    if not 0 <= dropout < 1:
        raise ValueError(f"expected dropout in [0, 1), got {dropout}")


@dataclass
class LanguageModelConfig:
    """The shape of a character (or byte) language model."""

    vocab_size: int
    cell: str = "lstm"
    num_layers: int = 2
    hidden_size: int = 128
    embedding_size: int = 64
    dropout: float = 0.0

    def check(self) -> None:
        """Raise ``ValueError`` for an unknown cell, a size below 1 or a bad dropout."""
        check_config(
            self.cell,
            self.dropout,
            vocab_size=self.vocab_size,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            embedding_size=self.embedding_size,
        )

    def to_dict(self) -> dict:
        return asdict(self)


class CharLanguageModel(nn.Module):
    """Embedding, a recurrent stack and a linear read-out to next-symbol logits."""

    def __init__(self, config: LanguageModelConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.recurrent = build_recurrent(
            config.cell,
            config.embedding_size,
            config.hidden_size,
            config.num_layers,
            config.dropout,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, ids: Tensor, state=None):
        """Return logits (T, B, V) for ids (T, B) and the state after the last step.

        ``state`` is what a previous call returned (h_n, or (h_n, c_n) for the
        LSTM), or None for zeros.
        """
        output, state = self.recurrent(self.embedding(ids), state)
        return self.head(self.dropout(output)), state


def detach_state(state):
    """Cut a recurrent state off from the graph that produced it."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


@dataclass
class ClassifierConfig:
    """The shape of a sequence classifier.

    With ``vocab_size`` > 0 the input is symbol ids, embedded first; with 0 it
    is ``input_size`` numbers per step.
    """

    num_classes: int
    cell: str = "lstm"
    num_layers: int = 1
    hidden_size: int = 64
    embedding_size: int = 32
    vocab_size: int = 0
    input_size: int = 1
    dropout: float = 0.0

    def check(self) -> None:
        """Raise ``ValueError`` for an unknown cell, a size out of range or a bad
        dropout."""
        check_config(
            self.cell,
            self.dropout,
            num_classes=self.num_classes,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            embedding_size=self.embedding_size,
            input_size=self.input_size,
        )
        if self.vocab_size < 0:
            raise ValueError(f"expected vocab_size >= 0, got {self.vocab_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class SequenceClassifier(nn.Module):
    """A recurrent stack read out at each row's last valid step into class logits."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        if config.vocab_size > 0:
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
            input_size = config.embedding_size
        else:
            self.embedding = None
            input_size = config.input_size
        self.recurrent = build_recurrent(
            config.cell,
            input_size,
            config.hidden_size,
            config.num_layers,
            config.dropout,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, config.num_classes)

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """Return logits (B, C) for padded inputs and each row's length.

        ``inputs`` is ids (B, T) or numbers (B, T, F); steps past a row's length
        are padding and do not reach the result.
        """
        x = self.embedding(inputs) if self.embedding is not None else inputs
        _, state = self.recurrent(x, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(h_n[-1])
