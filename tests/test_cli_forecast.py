"""End-to-end runs of ``rnnkit compare``, ``train`` and ``forecast``.

The metrics in results.json are recomputed here from forecast.csv with the
formulas written out independently of rnnkit.tasks.forecast.metrics.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnkit.cli import main
from rnnkit.tasks.forecast import load_checkpoint

DATA = Path(__file__).parents[2] / "shared" / "data"
FAST = ["--epochs", "3", "--hidden-size", "8", "--context", "12", "--quiet"]
BASELINES = ["naive", "seasonal_naive", "ets"]


def recompute_metrics(truth, forecast, training, season):
    error = truth - forecast
    denominator = np.abs(truth) + np.abs(forecast)
    ratio = np.where(denominator > 0, 2 * np.abs(error) / np.where(
        denominator > 0, denominator, 1), 0.0)  # fmt: skip
    scale = np.mean(np.abs(training[season:] - training[:-season]))
    return {
        "mae": np.mean(np.abs(error)),
        "rmse": np.sqrt(np.mean(error**2)),
        "smape": 100 * np.mean(ratio),
        "mase": np.mean(np.abs(error)) / scale,
    }


def check_outputs(out: Path, target: np.ndarray, models: list[str]) -> dict:
    """Check the files of a compare run and that its metrics recompute."""
    for name in ["results.json", "forecast.csv", "forecast.png"]:
        assert (out / name).is_file(), name
    assert (out / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    frame = pd.read_csv(out / "forecast.csv")

    split = results["data"]["split"]
    train_rows, test_rows = split["train"]["rows"], split["test"]["rows"]
    assert len(frame) == test_rows
    assert frame["truth"].to_numpy() == pytest.approx(target[-test_rows:])
    training = target[:train_rows]
    season = results["data"]["season"]

    names = [row["name"] for row in results["models"]]
    assert names == models + BASELINES
    for row in results["models"]:
        expected = recompute_metrics(
            frame["truth"].to_numpy(), frame[row["name"]].to_numpy(), training, season
        )
        for metric, value in expected.items():
            assert row["metrics"][metric] == pytest.approx(value, rel=1e-9), (
                row["name"],
                metric,
            )
    for name in models:
        model, metadata = load_checkpoint(out / f"{name}.pt")
        assert metadata["model"]["cell"] == name
    return results


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_builtin_series(tmp_path, capsys):
    from statsmodels.datasets import sunspots

    code, out, _ = run(["compare", "--out", str(tmp_path / "run"), *FAST], capsys)

    assert code == 0
    target = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(float)
    results = check_outputs(tmp_path / "run", target, ["rnn", "lstm", "gru"])
    assert results["data"]["source"] == "builtin:sunspots"
    assert "MASE" in out
    assert "*" in out


def test_compare_airline_recurrent_beats_naive(tmp_path, capsys):
    path = DATA / "airline-passengers.csv"
    args = ["compare", "--data", str(path), "--out", str(tmp_path / "run"),
            "--epochs", "60", "--quiet"]  # fmt: skip

    code, _, _ = run(args, capsys)

    assert code == 0
    target = pd.read_csv(path)["Passengers"].to_numpy(float)
    results = check_outputs(tmp_path / "run", target, ["rnn", "lstm", "gru"])
    mase = {row["name"]: row["metrics"]["mase"] for row in results["models"]}
    best_recurrent = min(mase["rnn"], mase["lstm"], mase["gru"])
    assert best_recurrent < mase["naive"]
    assert results["data"]["season"] == 12


@pytest.mark.parametrize(
    ("name", "column"),
    [("monthly-sunspots.csv", "Sunspots"), ("daily-min-temperatures.csv", "Temp")],
)
def test_compare_long_shared_series(tmp_path, capsys, name, column):
    path = DATA / name
    args = ["compare", "--data", str(path), "--out", str(tmp_path / "run"),
            "--models", "gru", "--epochs", "1", "--batch-size", "256",
            "--hidden-size", "8", "--context", "14", "--quiet"]  # fmt: skip

    code, _, _ = run(args, capsys)

    assert code == 0
    target = pd.read_csv(path)[column].to_numpy(float)
    check_outputs(tmp_path / "run", target, ["gru"])


def test_compare_recursive_strategy(tmp_path, capsys):
    path = DATA / "airline-passengers.csv"
    args = ["compare", "--data", str(path), "--out", str(tmp_path / "run"),
            "--strategy", "recursive", "--models", "lstm", *FAST]  # fmt: skip

    code, _, _ = run(args, capsys)

    assert code == 0
    target = pd.read_csv(path)["Passengers"].to_numpy(float)
    results = check_outputs(tmp_path / "run", target, ["lstm"])
    assert results["settings"]["strategy"] == "recursive"


def test_compare_same_seed_same_numbers(tmp_path, capsys):
    path = str(DATA / "airline-passengers.csv")
    metrics = []
    for run_name in ["first", "second"]:
        args = ["compare", "--data", path, "--out", str(tmp_path / run_name),
                "--models", "rnn", "--seed", "7", *FAST]  # fmt: skip
        assert run(args, capsys)[0] == 0
        results = json.loads((tmp_path / run_name / "results.json").read_text())
        metrics.append([row["metrics"] for row in results["models"]])

    assert metrics[0] == metrics[1]


def test_compare_several_columns(tmp_path, capsys, caplog):
    # The first 600 hourly rows of the Beijing data, with missing PM2.5 values.
    frame = pd.read_csv(DATA / "pollution.csv", nrows=600)
    path = tmp_path / "pollution.csv"
    frame.to_csv(path, index=False)
    args = ["compare", "--data", str(path), "--column", "pm2.5", "DEWP", "TEMP",
            "--fill", "interpolate", "--horizon", "6", "--models", "lstm",
            "--out", str(tmp_path / "run"), *FAST]  # fmt: skip

    code, _, _ = run(args, capsys)

    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"]["columns"] == ["pm2.5", "DEWP", "TEMP"]
    assert "dropped the first 24 rows" in caplog.text
    _, metadata = load_checkpoint(tmp_path / "run" / "lstm.pt")
    assert metadata["model"]["input_size"] == 3


def test_progress_bar_on_stderr_unless_quiet(tmp_path, capsys):
    path = str(DATA / "airline-passengers.csv")
    base = ["compare", "--data", path, "--models", "gru", "--epochs", "2",
            "--hidden-size", "8", "--context", "12"]  # fmt: skip

    _, _, loud = run([*base, "--out", str(tmp_path / "a")], capsys)
    _, _, quiet = run([*base, "--out", str(tmp_path / "b"), "--quiet"], capsys)

    assert "gru   epoch    1/2" in loud
    assert "val" in loud
    assert quiet == ""


def test_train_then_forecast(tmp_path, capsys):
    path = str(DATA / "airline-passengers.csv")
    train_out, forecast_out = tmp_path / "train", tmp_path / "forecast"

    code, _, _ = run(["train", "--data", path, "--model", "lstm",
                      "--out", str(train_out), *FAST], capsys)  # fmt: skip
    assert code == 0
    assert (train_out / "lstm.pt").is_file()

    checkpoint = str(train_out / "lstm.pt")
    code, out, _ = run(["forecast", "--checkpoint", checkpoint,
                        "--out", str(forecast_out)], capsys)  # fmt: skip
    assert code == 0
    frame = pd.read_csv(forecast_out / "forecast.csv")
    assert frame["date"].tolist()[:2] == ["1961-01-01", "1961-02-01"]
    assert len(frame) == 12
    assert np.isfinite(frame["Passengers"]).all()
    assert (forecast_out / "forecast.png").is_file()
    assert "1961-12-01" in out

    code, _, _ = run(["forecast", "--checkpoint", checkpoint, "--horizon", "3",
                      "--out", str(forecast_out)], capsys)  # fmt: skip
    assert code == 0
    assert len(pd.read_csv(forecast_out / "forecast.csv")) == 3


def test_forecast_rejects_horizon_beyond_direct_model(tmp_path, capsys):
    out = tmp_path / "train"
    run(["train", "--data", str(DATA / "airline-passengers.csv"), "--model", "rnn",
         "--out", str(out), *FAST], capsys)  # fmt: skip

    code, _, err = run(["forecast", "--checkpoint", str(out / "rnn.pt"),
                        "--horizon", "24", "--out", str(tmp_path / "f")],
                       capsys)  # fmt: skip

    assert code == 2
    assert "trained to forecast 12 steps" in err
    assert not (tmp_path / "f").exists()


def test_python_m_rnnkit_compare(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "rnnkit", "compare", "--data",
               str(DATA / "airline-passengers.csv"), "--out", str(out),
               "--models", "rnn,gru", *FAST]  # fmt: skip

    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr
    assert "seasonal_naive" in completed.stdout
    target = pd.read_csv(DATA / "airline-passengers.csv")["Passengers"].to_numpy(float)
    check_outputs(out, target, ["rnn", "gru"])


def test_recursive_forecast_of_builtin_series(tmp_path, capsys):
    train_out = tmp_path / "train"
    code, _, _ = run(["train", "--model", "gru", "--strategy", "recursive",
                      "--out", str(train_out), *FAST], capsys)  # fmt: skip
    assert code == 0

    # Without --data the forecast reads the built-in series again, and a
    # recursive model forecasts past its training horizon of 12.
    code, _, _ = run(["forecast", "--checkpoint", str(train_out / "gru.pt"),
                      "--horizon", "20", "--out", str(tmp_path / "f")],
                     capsys)  # fmt: skip

    assert code == 0
    frame = pd.read_csv(tmp_path / "f" / "forecast.csv")
    assert len(frame) == 20
    assert frame["date"].iloc[0] == "2009-01-01"
    assert frame["date"].iloc[-1] == "2028-01-01"


def test_train_lists_every_file_written(tmp_path, capsys):
    out = tmp_path / "train"
    code, _, err = run(["train", "--data", str(DATA / "airline-passengers.csv"),
                        "--model", "rnn", "--epochs", "1", "--hidden-size", "8",
                        "--context", "12", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0
    written = sorted(path.name for path in out.iterdir())
    assert written == ["forecast.csv", "results.json", "resume.pt", "rnn.pt"]
    assert f"wrote results.json, forecast.csv, rnn.pt, resume.pt to {out}" in err
