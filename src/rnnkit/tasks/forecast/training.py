"""The training loop: Adam on mean squared error, early stopping on validation.

The loop is a plain PyTorch loop split into ``train_epoch`` and
``validation_loss``, so that distributed training or resuming from a saved
optimiser state can replace one step without touching the others.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class TrainConfig:
    """Optimisation settings; ``epochs`` is the maximum number of epochs."""

    epochs: int = 100
    patience: int = 10
    learning_rate: float = 5e-3
    batch_size: int = 32
    max_grad_norm: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EpochReport:
    """What the progress callback receives after each epoch."""

    name: str
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    improved: bool


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    history: list[tuple[float, float]] = field(default_factory=list)


ProgressCallback = Callable[[EpochReport], None]


def fit(
    model: nn.Module,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    name: str = "",
) -> TrainResult:
    """Train ``model`` in place and restore the weights of its best epoch.

    ``train_data`` and ``val_data`` are (inputs, targets) arrays from
    ``make_windows``. Training stops after ``config.patience`` epochs without
    a lower validation loss, or after ``config.epochs`` epochs.
    """
    _check_config(config)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_inputs, train_targets = (torch.from_numpy(array) for array in train_data)
    val_inputs, val_targets = (torch.from_numpy(array) for array in val_data)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    started = time.perf_counter()
    best_loss, best_epoch, best_state = math.inf, 0, None
    history = []
    for epoch in range(1, config.epochs + 1):
        train_loss = train_epoch(
            model, optimizer, train_inputs, train_targets, config, generator
        )
        val_loss = validation_loss(model, val_inputs, val_targets, config.batch_size)
        history.append((train_loss, val_loss))

        improved = val_loss < best_loss
        if improved:
            best_loss, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        if progress is not None:
            progress(
                EpochReport(
                    name,
                    epoch,
                    config.epochs,
                    train_loss,
                    val_loss,
                    best_loss,
                    improved,
                )
            )
        if epoch - best_epoch >= config.patience:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_val_loss=best_loss,
        seconds=time.perf_counter() - started,
        history=history,
    )


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
) -> float:
    """Run one pass over shuffled mini-batches; return the mean training loss."""
    model.train()
    order = torch.randperm(len(inputs), generator=generator)
    total = 0.0
    for start in range(0, len(inputs), config.batch_size):
        batch = order[start : start + config.batch_size]
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs[batch]), targets[batch])
        loss.backward()
        # Clipping keeps an exploding gradient, common in recurrent nets on
        # long contexts, from wrecking the weights in a single step.
        nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(inputs)


@torch.no_grad()
def validation_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> float:
    """Return the mean squared error of ``model`` over all validation windows."""
    model.eval()
    total = 0.0
    for start in range(0, len(inputs), batch_size):
        prediction = model(inputs[start : start + batch_size])
        target = targets[start : start + batch_size]
        total += nn.functional.mse_loss(prediction, target, reduction="sum").item()
    return total / targets.numel()


def _check_config(config: TrainConfig) -> None:
    checks = [
        ("epochs", config.epochs, config.epochs >= 1),
        ("patience", config.patience, config.patience >= 1),
        ("learning rate", config.learning_rate, config.learning_rate > 0),
        ("batch size", config.batch_size, config.batch_size >= 1),
    ]
    for label, value, valid in checks:
        if not valid:
            raise ValueError(f"invalid {label} {value}: expected a positive number")
