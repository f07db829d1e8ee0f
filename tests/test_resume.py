"""Resuming training: random state, fit and compare continued, a killed run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.resume import (
    RunCheckpoint,
    capture_rng,
    check_same_settings,
    load_run_state,
    restore_rng,
)
from rnnkit.tasks.forecast.compare import CompareSettings, run_compare
from rnnkit.tasks.forecast.model import Forecaster, ModelConfig
from rnnkit.tasks.forecast.training import TrainConfig, fit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AIRLINE = DATA / "airline-passengers.csv"


def draw_all(generator):
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        np.random.randn(1).tolist(),
        [random.random() for _ in range(3)],
        torch.randperm(10, generator=generator).tolist(),
    )


def test_rng_restore_repeats_draws():
    generator = torch.Generator().manual_seed(5)
    np.random.randn(1)  # leaves a cached Gaussian in NumPy's state
    state = capture_rng({"shuffle": generator})
    first = draw_all(generator)

    restore_rng(state, {"shuffle": generator})

    assert draw_all(generator) == first


def test_rng_restore_rejects_unknown_generator():
    state = capture_rng({})

    with pytest.raises(ValueError, match="no generator named shuffle"):
        restore_rng(state, {"shuffle": torch.Generator()})


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


def train(validation, epochs, patience, **resume_options):
    torch.manual_seed(0)
    model_config = ModelConfig(
        cell="gru", input_size=1, horizon=2, hidden_size=8, num_layers=2, dropout=0.2
    )
    model = Forecaster(model_config)
    config = TrainConfig(epochs=epochs, patience=patience, batch_size=16, lr_patience=1)
    outcome = fit(model, sine_windows(0, 60), validation, config, **resume_options)
    return model, outcome


@pytest.mark.parametrize(
    "validation, patience, resume_epoch",
    [
        (sine_windows(100, 16), 100, 3),
        # Noise stops improving soon: the run stops early, and resuming from
        # the stopping epoch's state trains no further epoch.
        (noise_windows(16), 2, -1),
    ],
)
def test_fit_resumed_equals_uninterrupted(validation, patience, resume_epoch):
    # Dropout draws from torch's generator and the shuffle from its own, and
    # lr_patience=1 makes the scheduler lower the rate, so all three states
    # must be restored for the weights to come out equal.
    states = []
    model, outcome = train(validation, 8, patience, save_state=states.append)

    resumed_model, resumed = train(
        validation, 8, patience, resume_from=states[resume_epoch]
    )

    assert len(states) == outcome.epochs_run
    assert resumed.history == outcome.history
    assert resumed.best_epoch == outcome.best_epoch
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], tensor), name
    learning_rates = {s["optimizer"]["param_groups"][0]["lr"] for s in states}
    assert len(learning_rates) > 1


def compare_settings(**overrides):
    values = dict(data=str(AIRLINE), models=["rnn", "gru"], epochs=5, patience=10,
                  hidden_size=6, batch_size=16, baselines=False)  # fmt: skip
    return CompareSettings(**{**values, **overrides})


class Crash(Exception):
    pass


def crash_at(name, epoch):
    def progress(report):
        if report.name == name and report.epoch == epoch:
            raise Crash

    return progress


def test_compare_resumes_after_crash_in_second_model(tmp_path):
    settings = compare_settings()
    path = tmp_path / "resume.pt"
    expected = run_compare(settings)

    with pytest.raises(Crash):
        run_compare(settings, crash_at("gru", 3),
                    run_state=RunCheckpoint(path, settings.to_dict()))  # fmt: skip
    saved = load_run_state(path)
    assert list(saved["finished"]) == ["rnn"]
    assert saved["current"]["name"] == "gru"
    assert saved["current"]["training"]["loop"]["epoch"] == 3

    resumed = run_compare(
        settings, run_state=RunCheckpoint.resume(path, path, settings.to_dict())
    )

    for want, got in zip(expected.results, resumed.results, strict=True):
        assert got.name == want.name
        assert got.epochs == want.epochs
        np.testing.assert_array_equal(got.forecast, want.forecast)
    for name, payload in expected.checkpoints.items():
        for key, tensor in payload["state_dict"].items():
            assert torch.equal(resumed.checkpoints[name]["state_dict"][key], tensor)


def test_resume_rejects_other_settings(tmp_path):
    settings = compare_settings()
    path = tmp_path / "resume.pt"
    RunCheckpoint(path, settings.to_dict()).save_finished("rnn", {}, {})

    other = compare_settings(hidden_size=7).to_dict()

    with pytest.raises(ValueError, match=r"hidden_size=6 \(now 7\)"):
        RunCheckpoint.resume(path, path, other)


def test_check_same_settings_names_added_setting():
    with pytest.raises(ValueError, match=r"seed=None \(now 1\)"):
        check_same_settings({}, {"seed": 1}, "resume.pt")


def test_cli_resume_rejects_bad_files(tmp_path, capsys):
    options = ["train", "--data", str(AIRLINE), "--out", str(tmp_path / "out"),
               "--quiet", "--resume"]  # fmt: skip
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    model_checkpoint = tmp_path / "model.pt"
    torch.save({"format": "rnnkit-forecaster"}, model_checkpoint)
    old_version = tmp_path / "old.pt"
    torch.save({"format": "rnnkit-run-state", "format_version": 0}, old_version)
    cases = [
        (tmp_path / "missing.pt", "resume checkpoint not found"),
        (garbage, "torch.load could not read it"),
        (model_checkpoint, "a final model checkpoint cannot be resumed"),
        (old_version, "resume format version 0"),
    ]

    for path, message in cases:
        assert main([*options, str(path)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_resume_rejects_other_options(tmp_path, capsys):
    out = tmp_path / "out"
    options = ["train", "--data", str(AIRLINE), "--out", str(out), "--quiet",
               "--epochs", "1", "--hidden-size", "4"]  # fmt: skip
    assert main(options) == 0
    capsys.readouterr()

    code = main([*options[:-1], "5", "--resume", str(out / "resume.pt")])

    assert code == 2
    assert "hidden_size=4 (now 5)" in capsys.readouterr().err


def train_command(out, *extra):
    return [sys.executable, "-m", "rnnkit", "train", "--data", str(AIRLINE),
            "--out", str(out), "--epochs", "10", "--patience", "100",
            "--hidden-size", "8", "--batch-size", "16", "--quiet", *extra]  # fmt: skip


def load_whole(path):
    """Load a checkpoint; a half-written file fails here."""
    return torch.load(path, map_location="cpu", weights_only=True)


def stray_names(directory):
    """Return names that look like the resume checkpoint but are not it or a
    dot-prefixed temporary file."""
    return [
        entry.name
        for entry in directory.iterdir()
        if "resume.pt" in entry.name
        and entry.name != "resume.pt"
        and not (entry.name.startswith(".") and entry.name.endswith(".tmp"))
    ]


def test_killed_run_resumes_to_same_weights(tmp_path):
    killed_out, full_out = tmp_path / "killed", tmp_path / "full"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The uninterrupted run is a fresh process too, so that no state left by
    # other tests in this process can make the two runs differ.
    uninterrupted = subprocess.Popen(train_command(full_out), env=environment)
    killed = subprocess.Popen(train_command(killed_out), env=environment)

    # Kill the run as soon as its first checkpoint appears.
    checkpoint = killed_out / "resume.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and killed.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not (killed_out / "lstm.pt").exists()
    first = load_whole(checkpoint)
    assert 1 <= first["current"]["training"]["loop"]["epoch"] < 10
    assert stray_names(killed_out) == []

    # Resume, loading every version of the checkpoint seen while it runs.
    resumed = subprocess.Popen(
        train_command(killed_out, "--resume", str(checkpoint)), env=environment
    )
    seen, loaded = set(), 0
    while resumed.poll() is None:
        try:
            version = checkpoint.stat().st_ino, checkpoint.stat().st_mtime_ns
            if version not in seen:
                seen.add(version)
                load_whole(checkpoint)
                loaded += 1
        except FileNotFoundError:
            pytest.fail("the checkpoint disappeared while being replaced")
        assert stray_names(killed_out) == []
        time.sleep(0.002)
    assert resumed.returncode == 0
    assert uninterrupted.wait(timeout=300) == 0
    assert loaded >= 1

    final = load_whole(killed_out / "lstm.pt")["state_dict"]
    expected = load_whole(full_out / "lstm.pt")["state_dict"]
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(final[name], tensor), name
    history = load_whole(checkpoint)["finished"]["lstm"]["outcome"]["history"]
    assert len(history) == 10
