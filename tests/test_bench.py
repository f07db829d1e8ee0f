"""``rnnkit bench`` on a tiny subset: the table and JSON structure, and bad input.

Speed is not checked here; the numbers live in docs/performance.md.
"""

import json

import pytest

from rnnkit.cli import main
from rnnkit.kernels import benchmark

ARGS = ["bench", "--sizes", "4,2,3,5", "--repeats", "2", "--warmup", "1"]


def test_bench_writes_table_and_json(tmp_path, capsys):
    output = tmp_path / "bench.json"
    code = main([*ARGS, "--cells", "GRU,LSTM", "--output", str(output)])
    assert code == 0

    table = capsys.readouterr().out
    assert "torch ms" in table
    assert "ratio" in table
    assert "GRU T=4 B=2 I=3 H=5" in table
    assert "LSTM T=4 B=2 I=3 H=5" in table

    report = json.loads(output.read_text())
    assert report["settings"]["repeats"] == 2
    assert report["settings"]["threads"] >= 1
    assert report["machine"]["cores"] >= 1
    assert "cpu" in report["machine"]
    results = report["results"]
    assert [(r["cell"], r["pass"]) for r in results] == [
        ("GRU", "inference"),
        ("GRU", "training"),
        ("LSTM", "inference"),
        ("LSTM", "training"),
    ]
    for record in results:
        assert (record["steps"], record["batch"]) == (4, 2)
        assert (record["input_size"], record["hidden_size"]) == (3, 5)
        assert record["torch_ms"] > 0
        assert record["rnnkit_ms"] > 0
        assert record["ratio"] == pytest.approx(
            record["torch_ms"] / record["rnnkit_ms"]
        )
        if record["pass"] == "training":
            assert record["torch_peak_bytes"] > 0
            assert record["rnnkit_peak_bytes"] > 0
        else:
            assert record["torch_peak_bytes"] is None


def test_bench_layers_and_bidirectional(tmp_path):
    output = tmp_path / "bench.json"
    options = ["--cells", "RNN", "--passes", "training", "--layers", "2"]
    options += ["--bidirectional", "--no-memory", "--output", str(output)]
    assert main([*ARGS, *options]) == 0
    (record,) = json.loads(output.read_text())["results"]
    assert record["num_layers"] == 2
    assert record["bidirectional"] is True
    assert record["rnnkit_peak_bytes"] is None


def test_peak_memory_counts_a_known_allocation():
    import torch

    def allocate():
        first = torch.empty(1000, dtype=torch.float32)
        second = torch.empty(500, dtype=torch.float32)
        del first, second

    assert benchmark.peak_memory(allocate) >= 6000


@pytest.mark.parametrize(
    "options, message",
    [
        (["--sizes", "1,2"], "invalid --sizes entry '1,2'"),
        (["--sizes", "4,2,x,5"], "invalid --sizes entry '4,2,x,5'"),
        (["--sizes", "4,0,3,5"], "invalid --sizes entry '4,0,3,5'"),
        (["--cells", "TRANSFORMER"], "expected a cell among RNN, GRU, LSTM"),
        (["--passes", "both"], "expected a pass among inference, training"),
        (["--repeats", "0"], "expected --repeats greater than zero, got 0"),
        (["--warmup", "-1"], "expected --warmup of zero or more, got -1"),
        (["--layers", "0"], "expected num_layers greater than zero, got 0"),
    ],
)
def test_bench_rejects_bad_input(options, message, tmp_path, capsys):
    code = main([*ARGS, *options, "--output", str(tmp_path / "bench.json")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("rnnkit: error: ")
    assert message in error[-1]
    assert not (tmp_path / "bench.json").exists()


def test_bench_rejects_missing_output_directory(tmp_path, capsys):
    target = tmp_path / "missing" / "bench.json"
    code = main([*ARGS, "--cells", "RNN", "--output", str(target)])
    assert code == 2
    error = capsys.readouterr().err
    assert f"directory {target.parent} not found" in error
    # The check comes before any case runs.
    assert "ratio" not in error
