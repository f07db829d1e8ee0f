"""The training loop: early stopping, best weights, repeatable seeds."""

import numpy as np
import torch

from rnnkit.tasks.forecast.model import Forecaster, ModelConfig
from rnnkit.tasks.forecast.training import TrainConfig, fit, validation_loss


def sine_windows(start, count, context=8, horizon=2):
    t = np.arange(start, start + count + context + horizon) * 0.3
    series = np.sin(t).astype(np.float32)
    inputs = np.stack([series[i : i + context] for i in range(count)])[..., None]
    targets = np.stack([series[i + context : i + context + horizon]
                        for i in range(count)])  # fmt: skip
    return inputs, targets


def noise_windows(count, context=8, horizon=2):
    generator = np.random.default_rng(0)
    inputs = generator.normal(size=(count, context, 1)).astype(np.float32)
    targets = generator.normal(size=(count, horizon)).astype(np.float32)
    return inputs, targets


def train(seed=0, epochs=10, patience=100, progress=None, validation=None):
    torch.manual_seed(seed)
    model = Forecaster(ModelConfig(cell="lstm", input_size=1, horizon=2,
                                   hidden_size=8))  # fmt: skip
    config = TrainConfig(epochs=epochs, patience=patience, batch_size=16, seed=seed)
    validation = sine_windows(100, 16) if validation is None else validation
    outcome = fit(model, sine_windows(0, 64), validation, config,
                  progress=progress, name="lstm")  # fmt: skip
    return model, outcome


def test_training_lowers_validation_loss():
    _, outcome = train()

    first_val = outcome.history[0][1]
    assert outcome.best_val_loss < first_val


def test_best_weights_are_restored():
    model, outcome = train()

    inputs, targets = (torch.from_numpy(a) for a in sine_windows(100, 16))
    loss = validation_loss(model, inputs, targets, batch_size=16)
    assert loss == outcome.best_val_loss
    assert outcome.history[outcome.best_epoch - 1][1] == outcome.best_val_loss


def test_early_stopping_after_patience():
    # Noise as validation data stops improving within a few epochs.
    _, outcome = train(epochs=100, patience=2, validation=noise_windows(16))

    assert outcome.epochs_run == outcome.best_epoch + 2
    assert outcome.epochs_run < 100


def test_same_seed_gives_same_weights():
    first, _ = train(seed=3, epochs=3)
    second, _ = train(seed=3, epochs=3)

    for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)


def test_progress_callback_gets_every_epoch():
    reports = []

    _, outcome = train(epochs=4, progress=reports.append)

    assert [r.epoch for r in reports] == [1, 2, 3, 4]
    assert reports[-1].epochs == 4
    assert reports[0].name == "lstm"


def test_kernel_load_is_not_training_time(slow_kernel_load):
    # A first-use compile of the fused kernels happens before the training
    # clock starts.
    _, outcome = train(epochs=1)
    assert len(slow_kernel_load.calls) == 1
    assert outcome.seconds < slow_kernel_load.seconds
