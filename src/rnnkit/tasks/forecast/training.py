"""The training loop: Adam on mean squared error, early stopping on validation.

The loop is a plain PyTorch loop split into ``train_epoch`` and
``validation_loss``. In a ``torch.distributed`` process group it trains a
DistributedDataParallel copy on each process, each on its shard of every
global batch (see ``rnnkit.distributed``). ``fit`` can hand its full state to
a callback after each epoch and continue from such a state (see
``rnnkit.resume``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from rnnkit import distributed, kernels
from rnnkit.resume import LoopState, capture_training, restore_training


@dataclass
class TrainConfig:
    """Optimisation settings; ``epochs`` is the maximum number of epochs."""

    epochs: int = 100
    patience: int = 10
    learning_rate: float = 5e-3
    batch_size: int = 32
    max_grad_norm: float = 1.0
    seed: int = 0
    # ReduceLROnPlateau: multiply the learning rate by lr_factor after
    # lr_patience epochs without a lower validation loss.
    lr_factor: float = 0.5
    lr_patience: int = 5

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EpochReport:
    """Progress report passed to the callback after each epoch."""

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
# Receives the training state (rnnkit.resume.capture_training) after each epoch.
StateCallback = Callable[[dict], None]


def fit(
    model: nn.Module,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    name: str = "",
    *,
    save_state: StateCallback | None = None,
    resume_from: dict | None = None,
) -> TrainResult:
    """Train ``model`` in place and restore the weights of its best epoch.

    ``train_data`` and ``val_data`` are (inputs, targets) arrays from
    ``make_windows``. Training stops after ``config.patience`` epochs without
    a lower validation loss, or after ``config.epochs`` epochs.

    ``save_state`` receives the whole training state after each epoch, on
    rank 0 only. ``resume_from`` is such a state: training continues from it
    and ends as it would have without the interruption. ``progress`` is
    called on rank 0 only.
    """
    _check_config(config)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    generators = {"shuffle": generator}
    train_inputs, train_targets = (torch.from_numpy(array) for array in train_data)
    val_inputs, val_targets = (torch.from_numpy(array) for array in val_data)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.lr_factor, patience=config.lr_patience
    )
    loop = LoopState()
    if resume_from is not None:
        loop = restore_training(resume_from, model, optimizer, scheduler, generators)
    network = distributed.wrap_model(model)
    main_process = distributed.is_main_process()

    kernels.prepare()  # a first-use compile does not count as training time
    started = time.perf_counter() - loop.seconds
    # A state saved after the stopping epoch resumes into no further epochs.
    stopped = loop.epoch - loop.best_epoch >= config.patience
    first_epoch = config.epochs + 1 if stopped else loop.epoch + 1
    for epoch in range(first_epoch, config.epochs + 1):
        train_loss, steps = train_epoch(
            network, optimizer, train_inputs, train_targets, config, generator
        )
        val_loss = validation_loss(model, val_inputs, val_targets, config.batch_size)
        scheduler.step(val_loss)
        loop.history.append((train_loss, val_loss))
        loop.epoch, loop.step = epoch, loop.step + steps

        improved = val_loss < loop.best_loss
        if improved:
            loop.best_loss, loop.best_epoch = val_loss, epoch
            loop.best_state = copy.deepcopy(model.state_dict())
        loop.seconds = time.perf_counter() - started
        if save_state is not None and main_process:
            save_state(capture_training(model, optimizer, scheduler, generators, loop))
        if progress is not None and main_process:
            progress(
                EpochReport(
                    name,
                    epoch,
                    config.epochs,
                    train_loss,
                    val_loss,
                    loop.best_loss,
                    improved,
                )
            )
        if epoch - loop.best_epoch >= config.patience:
            break

    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    model.eval()
    return TrainResult(
        epochs_run=len(loop.history),
        best_epoch=loop.best_epoch,
        best_val_loss=loop.best_loss,
        seconds=time.perf_counter() - started,
        history=list(loop.history),
    )


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[float, int]:
    """Run one pass over shuffled mini-batches.

    Returns the mean training loss over all processes and the number of
    optimizer steps. With several processes, every process draws the same
    order and trains on its shard of each global batch of
    ``config.batch_size`` windows.
    """
    model.train()
    order = torch.randperm(len(inputs), generator=generator)
    sharded = distributed.get_world_size() > 1
    total, steps = 0.0, 0
    for start in range(0, len(inputs), config.batch_size):
        batch = order[start : start + config.batch_size]
        optimizer.zero_grad()
        if sharded:
            rows, weights = distributed.shard_batch(batch)
            loss = distributed.sharded_mse_loss(
                model(inputs[rows]), targets[rows], weights, len(batch)
            )
            # The shares of all processes add up to world size times the
            # batch mean, so each adds its share divided by world size.
            total += loss.item() / distributed.get_world_size() * len(batch)
        else:
            loss = nn.functional.mse_loss(model(inputs[batch]), targets[batch])
            total += loss.item() * len(batch)
        loss.backward()
        # Clipping keeps an exploding gradient, common in recurrent nets on
        # long contexts, from wrecking the weights in a single step.
        nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        steps += 1
    (total,) = distributed.all_reduce_sum([total])
    return total / len(inputs), steps


@torch.no_grad()
def validation_loss(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> float:
    """Return the mean squared error of ``model`` over all validation windows.

    With several processes, each scores its shard of the windows and the sums
    are added across processes.
    """
    model.eval()
    shard = distributed.shard_range(len(inputs))
    inputs = inputs[shard.start : shard.stop]
    targets = targets[shard.start : shard.stop]
    total = 0.0
    for start in range(0, len(inputs), batch_size):
        prediction = model(inputs[start : start + batch_size])
        target = targets[start : start + batch_size]
        total += nn.functional.mse_loss(prediction, target, reduction="sum").item()
    total, count = distributed.all_reduce_sum([total, targets.numel()])
    return total / count


def _check_config(config: TrainConfig) -> None:
    checks = [
        ("epochs", config.epochs, config.epochs >= 1),
        ("patience", config.patience, config.patience >= 1),
        ("learning rate", config.learning_rate, config.learning_rate > 0),
        ("batch size", config.batch_size, config.batch_size >= 1),
        ("learning-rate patience", config.lr_patience, config.lr_patience >= 0),
    ]
    for label, value, valid in checks:
        if not valid:
            raise ValueError(f"invalid {label} {value}: expected a positive number")
    if not 0 < config.lr_factor < 1:
        raise ValueError(
            f"invalid learning-rate factor {config.lr_factor}: expected 0 < factor < 1"
        )
