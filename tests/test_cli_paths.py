"""Paths given to the commands: checked before work, cleaned up after errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.cli import main

DATA = Path(__file__).parents[2] / "shared" / "data"


def run(capsys, arguments: list[str]) -> tuple[int, str]:
    code = main(arguments)
    return code, capsys.readouterr().err.strip()


def test_text_train_rejects_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("keep me")
    code, error = run(
        capsys,
        ["text", "train", "--data", str(DATA / "tinyshakespeare.txt"), "--out",
         str(target), "--max-steps", "1", "--quiet"],
    )  # fmt: skip
    assert code == 2
    assert error == f"rnnkit: error: --out {target} is a file; expected a directory"
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "arguments",
    [["text", "train", "--data"], ["classify", "train", "--data"]],
)
def test_missing_data_file_is_named(tmp_path, capsys, arguments):
    missing = tmp_path / "absent.csv"
    code, error = run(capsys, [*arguments, str(missing), "--out", str(tmp_path / "o")])
    assert code == 2
    assert error == f"rnnkit: error: data file not found: {missing}"
    assert not (tmp_path / "o").exists()


def test_classify_train_failure_leaves_no_output(tmp_path, capsys):
    data = tmp_path / "one-label.csv"
    rows = [f"{i} {i + 1} {i + 2},a" for i in range(40)]
    data.write_text("sequence,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    code, error = run(
        capsys, ["classify", "train", "--data", str(data), "--out", str(out)]
    )
    assert code == 2
    assert "2 classes" in error
    assert not out.exists()


def test_classify_train_failure_keeps_existing_directory(tmp_path, capsys):
    data = tmp_path / "one-label.csv"
    data.write_text("sequence,label\n1 2,a\n3 4,a\n5 6,a\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _ = run(capsys, ["classify", "train", "--data", str(data), "--out", str(out)])
    assert code == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_classify_predict_rejects_out_that_is_a_directory(tmp_path, capsys):
    code, error = run(
        capsys,
        ["classify", "predict", "--checkpoint", str(tmp_path / "none.pt"), "--out",
         str(tmp_path)],
    )  # fmt: skip
    assert code == 2
    assert error == (
        f"rnnkit: error: --out {tmp_path} is a directory; expected a file name"
    )


def test_bench_rejects_output_directory_before_running(tmp_path, capsys):
    code, error = run(
        capsys,
        ["bench", "--sizes", "5,1,1,2", "--repeats", "1", "--output", str(tmp_path)],
    )
    assert code == 2
    assert error == (
        f"rnnkit: error: --output {tmp_path} is a directory; expected a file name"
    )
    assert capsys.readouterr().out == ""


def test_allocation_too_large_is_one_line(tmp_path, capsys):
    code, error = run(
        capsys,
        ["compare", "--data", str(DATA / "airline-passengers.csv"), "--models",
         "gru", "--epochs", "1", "--hidden-size", "100000000", "--quiet", "--out",
         str(tmp_path / "run")],
    )  # fmt: skip
    assert code == 2
    assert error.startswith("rnnkit: error: out of memory; choose smaller sizes")
    assert "\n" not in error


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--horizon", "abc"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error == (
        "rnnkit: error: argument --horizon: invalid int value: 'abc' "
        "(see 'rnnkit compare --help')\n"
    )


def test_closed_output_pipe_ends_quietly():
    # A reader that stops early (rnnkit explain ... | head -1) closes the
    # pipe. Here it is closed before the command writes at all.
    reader, writer = os.pipe()
    os.close(reader)
    command = [sys.executable, "-m", "rnnkit", "explain", "--model", "lstm",
               "--input", "0.1,0.2,0.3"]  # fmt: skip
    try:
        completed = subprocess.run(
            command, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(writer)
    assert completed.returncode == 1
    assert completed.stderr == ""


@pytest.mark.parametrize(
    ("arguments", "command"),
    [
        (["compare", "--bogus", "1"], "rnnkit compare"),
        (["classify", "train", "--bogus"], "rnnkit classify train"),
        (["--bogus"], "rnnkit"),
    ],
)
def test_unknown_option_points_to_its_command_help(capsys, arguments, command):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    unknown = " ".join(arguments[arguments.index("--bogus") :])
    assert error == (
        f"rnnkit: error: unrecognized arguments: {unknown} (see '{command} --help')\n"
    )
