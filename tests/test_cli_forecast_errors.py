"""Bad input to ``rnnkit compare``, ``train`` and ``forecast``.

Each case must end with one line on stderr, exit code 2, no traceback, and
no output directory.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rnnkit.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

GOOD_ROWS = [
    f"{2000 + i // 12}-{i % 12 + 1:02d}-01,{100 + i % 12 + i}" for i in range(60)
]


def csv_text(rows, header="date,value"):
    return "\n".join([header, *rows]) + "\n"


def replace_row(index, row):
    rows = list(GOOD_ROWS)
    rows[index] = row
    return csv_text(rows)


CASES = {
    "missing file": (None, [], "data file not found"),
    "unknown column": (csv_text(GOOD_ROWS), ["--column", "price"],
                       "column 'price' not found"),
    "non-numeric value": (replace_row(5, "2000-06-01,twelve"), [],
                          "'twelve' on line 7"),
    "missing value": (replace_row(5, "2000-06-01,"), [],
                      "1 missing value (lines 7)"),
    "unparseable date": (replace_row(5, "June 2000?,105"), [],
                         "not a date ('June 2000?' on line 7)"),
    "duplicated date": (replace_row(5, "2000-05-01,105"), [],
                        "duplicated dates: 2000-05-01 appears on lines 6, 7"),
    "unsorted dates": (replace_row(5, "1999-06-01,105"), [], "is not sorted"),
    "too short": (csv_text(GOOD_ROWS[:20]), [], "series too short: 20 rows"),
    "constant series": (csv_text([f"{r.split(',')[0]},5" for r in GOOD_ROWS]), [],
                        "is constant"),
    "horizon zero": (csv_text(GOOD_ROWS), ["--horizon", "0"], "invalid horizon 0"),
    "horizon negative": (csv_text(GOOD_ROWS), ["--horizon", "-3"],
                         "invalid horizon -3"),
    "unknown model": (csv_text(GOOD_ROWS), ["--models", "rnn,transformer"],
                      "unknown model 'transformer'"),
    "empty file": ("", [], "is empty"),
    "not csv": ("value\n1\n2,3\n", [], "Expected 1 fields in line 3, saw 2"),
}  # fmt: skip


def assert_clean_failure(code, err, expected):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rnnkit: error: ")
    assert expected in lines[0]
    assert "Traceback" not in err


# train takes one --model, which argparse checks, so "unknown model" is
# a compare case only.
COMMAND_CASES = [("compare", case) for case in CASES] + [
    ("train", case) for case in CASES if case != "unknown model"
]


@pytest.mark.parametrize(("command", "case"), COMMAND_CASES)
def test_bad_input_fails_cleanly(tmp_path, capsys, command, case):
    text, extra, expected = CASES[case]
    path = tmp_path / "series.csv"
    if text is not None:
        path.write_text(text)
    out = tmp_path / "out"
    args = [command, "--data", str(path), "--out", str(out), "--context", "6",
            "--horizon", "6", "--epochs", "1", "--quiet", *extra]  # fmt: skip

    code = main(args)

    assert_clean_failure(code, capsys.readouterr().err, expected)
    assert not out.exists()


def test_missing_values_can_be_filled(tmp_path, capsys):
    path = tmp_path / "series.csv"
    path.write_text(replace_row(5, "2000-06-01,"))

    code = main(["compare", "--data", str(path), "--out", str(tmp_path / "out"),
                 "--fill", "ffill", "--context", "6", "--horizon", "6", "--epochs", "1",
                 "--models", "rnn", "--quiet"])  # fmt: skip

    assert code == 0


def test_output_path_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "series.csv"
    path.write_text(csv_text(GOOD_ROWS))
    out = tmp_path / "taken"
    out.write_text("keep me")

    code = main(["compare", "--data", str(path), "--out", str(out), "--context", "6",
                 "--horizon", "6", "--quiet"])  # fmt: skip

    assert_clean_failure(code, capsys.readouterr().err, "is not a directory")
    assert out.read_text() == "keep me"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "checkpoint not found"),
        (b"plain text", "is not an rnnkit checkpoint"),
        ("torch dict", "not an rnnkit forecaster checkpoint"),
    ],
)
def test_forecast_bad_checkpoint(tmp_path, capsys, content, expected):
    path = tmp_path / "model.pt"
    if content == "torch dict":
        torch.save({"weight": torch.zeros(1)}, path)
    elif content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"

    code = main(["forecast", "--checkpoint", str(path), "--out", str(out)])

    assert_clean_failure(code, capsys.readouterr().err, expected)
    assert not out.exists()


def test_error_through_python_m_has_no_traceback(tmp_path):
    missing = str(tmp_path / "absent.csv")
    command = [sys.executable, "-m", "rnnkit", "compare", "--data", missing,
               "--out", str(tmp_path / "out")]  # fmt: skip

    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert_clean_failure(completed.returncode, completed.stderr, "data file not found")
    assert not Path(tmp_path / "out").exists()


def test_forecast_fills_gaps_in_new_data(tmp_path, capsys):
    # A model trained on complete data forecasts new data with gaps once
    # --fill is given, as the error for the gaps suggests.
    train_out = tmp_path / "train"
    code = main(["train", "--data", str(DATA / "airline-passengers.csv"),
                 "--model", "rnn", "--context", "6", "--horizon", "3",
                 "--epochs", "1", "--out", str(train_out)])  # fmt: skip
    assert code == 0
    frame = pd.read_csv(DATA / "airline-passengers.csv")
    frame.loc[[100, 101, 140], "Passengers"] = np.nan
    gaps = tmp_path / "gaps.csv"
    frame.to_csv(gaps, index=False)
    checkpoint = str(train_out / "rnn.pt")

    code = main(["forecast", "--checkpoint", checkpoint, "--data", str(gaps),
                 "--out", str(tmp_path / "error")])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2
    assert "--fill ffill" in error
    assert not (tmp_path / "error").exists()

    filled = frame.copy()
    filled["Passengers"] = filled["Passengers"].interpolate()
    complete = tmp_path / "filled.csv"
    filled.to_csv(complete, index=False)
    for data, out, extra in ((gaps, "with_fill", ["--fill", "interpolate"]),
                             (complete, "oracle", [])):  # fmt: skip
        code = main(["forecast", "--checkpoint", checkpoint, "--data", str(data),
                     "--out", str(tmp_path / out), *extra])  # fmt: skip
        assert code == 0
    got = pd.read_csv(tmp_path / "with_fill" / "forecast.csv")
    expected = pd.read_csv(tmp_path / "oracle" / "forecast.csv")
    pd.testing.assert_frame_equal(got, expected)


def test_csv_parse_error_ends_in_one_newline(tmp_path, capsys):
    # pandas ends this parser message in a newline of its own.
    path = tmp_path / "series.csv"
    path.write_text("value\n1\n2,3\n")
    code = main(["compare", "--data", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("rnnkit: error: could not parse")
    assert err.count("\n") == 1


def test_forecast_names_moved_training_series(tmp_path, capsys):
    series = tmp_path / "series.csv"
    series.write_text(csv_text(GOOD_ROWS))
    train_out = tmp_path / "train"
    code = main(["train", "--data", str(series), "--model", "rnn", "--context", "6",
                 "--horizon", "3", "--epochs", "1", "--quiet",
                 "--out", str(train_out)])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    series.rename(tmp_path / "moved.csv")

    out = tmp_path / "forecast"
    code = main(["forecast", "--checkpoint", str(train_out / "rnn.pt"),
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert_clean_failure(code, err, "pass the series to forecast with --data")
    assert f"trained on, {series}, was not found" in err
    assert not out.exists()

    code = main(["forecast", "--checkpoint", str(train_out / "rnn.pt"),
                 "--data", str(tmp_path / "moved.csv"), "--out", str(out)])  # fmt: skip
    assert code == 0
