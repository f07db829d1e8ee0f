"""The ``rnnkit classify train`` and ``rnnkit classify predict`` commands end to end."""

import csv
import json
from pathlib import Path

import pytest
import torch

from rnnkit.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare.txt"
TINY = ["--hidden", "16", "--embedding", "8", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and on a busy machine the
    # thread pool's waiting slows them several times over.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def speaker_csv(tmp_path_factory):
    """Write lines of the play labelled 'speaker' (a name and a colon) or 'speech'."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:12000]
    path = tmp_path_factory.mktemp("data") / "lines.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["line", "kind"])
        for line in text.splitlines():
            if line.strip():
                writer.writerow([line, "speaker" if line.endswith(":") else "speech"])
    return path


@pytest.fixture(scope="module")
def trained(speaker_csv, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["classify", "train", "--data", str(speaker_csv), "--out", str(out)]
    argv += ["--sequence-column", "line", "--label-column", "kind", *TINY]
    argv += ["--model", "gru", "--epochs", "3", "--lr", "0.01"]
    assert main(argv) == 0
    return out


def assert_one_line_error(capsys, code: int, *fragments: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("rnnkit: error: ")
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0]


def test_train_on_csv_beats_majority(trained):
    results = json.loads((trained / "results.json").read_text())
    test = results["test"]
    assert results["kind"] == "text"
    assert test["accuracy"] > test["majority_accuracy"] + 0.1
    assert sum(map(sum, test["confusion"])) == test["count"]
    assert (trained / "classifier.pt").is_file()


def test_train_on_builtin_digits(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["classify", "train", "--out", str(out), "--epochs", "1", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "accuracy on 359 test sequences" in printed
    assert "confusion matrix" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["accuracy"] > results["test"]["majority_accuracy"]
    assert results["data"].startswith("scikit-learn handwritten digits")

    # Predict on the built-in set, then on text, which a digits model rejects.
    predictions = tmp_path / "predictions.csv"
    argv = ["classify", "predict", "--checkpoint", str(out / "classifier.pt")]
    capsys.readouterr()
    assert main([*argv, "--out", str(predictions)]) == 0
    with predictions.open(newline="") as file:
        assert len(list(csv.DictReader(file))) == 1797
    err = capsys.readouterr().err
    assert err.startswith("note: the built-in digits include the rows")
    text = tmp_path / "text.csv"
    text.write_text("sequence\nnot numbers\n")
    capsys.readouterr()
    predictions.unlink()
    code = main([*argv, "--data", str(text), "--out", str(predictions)])
    assert_one_line_error(capsys, code, "'not' is not a number")
    assert not predictions.exists()


def test_predict_writes_predictions(trained, speaker_csv, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    argv = ["classify", "predict", "--checkpoint", str(trained / "classifier.pt")]
    argv += ["--data", str(speaker_csv), "--sequence-column", "line"]
    argv += ["--label-column", "kind", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "accuracy on" in printed
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    with speaker_csv.open(newline="") as file:
        source = list(csv.DictReader(file))
    assert len(rows) == len(source)
    assert [row["label"] for row in rows] == [row["kind"] for row in source]
    assert {row["prediction"] for row in rows} <= {"speaker", "speech"}
    correct = sum(row["prediction"] == row["label"] for row in rows)
    assert correct / len(rows) > 0.85
    assert all(0 < float(row["probability"]) <= 1 for row in rows)


def test_predict_without_labels(trained, tmp_path, capsys):
    data = tmp_path / "new.jsonl"
    lines = [{"line": "KING RICHARD III:"}, {"line": "Good morrow to you, sir."}]
    data.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "predictions.csv"
    argv = ["classify", "predict", "--checkpoint", str(trained / "classifier.pt")]
    argv += ["--data", str(data), "--sequence-column", "line", "--out", str(out)]
    assert main(argv) == 0
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["row", "prediction", "probability"]
    assert [row["row"] for row in rows] == ["1", "2"]


def test_predict_uses_trained_columns(trained, speaker_csv, tmp_path, capsys):
    # The model was trained with --sequence-column line --label-column kind.
    # Without those options, predict reads the same columns, so its
    # predictions equal those of a run that names them.
    outs = {}
    for name, options in (
        ("recorded", []),
        ("named", ["--sequence-column", "line", "--label-column", "kind"]),
    ):
        outs[name] = tmp_path / f"{name}.csv"
        argv = ["classify", "predict", "--checkpoint", str(trained / "classifier.pt")]
        argv += ["--data", str(speaker_csv), "--out", str(outs[name]), *options]
        assert main(argv) == 0
    assert outs["recorded"].read_text() == outs["named"].read_text()
    with outs["recorded"].open(newline="") as file:
        assert next(csv.reader(file)) == ["row", "prediction", "probability", "label"]


def test_predict_option_overrides_trained_column(trained, tmp_path, capsys):
    data = tmp_path / "new.csv"
    data.write_text("text\nKING RICHARD III:\n")
    argv = ["classify", "predict", "--checkpoint", str(trained / "classifier.pt")]
    argv += ["--data", str(data), "--out", str(tmp_path / "p.csv")]
    assert_one_line_error(capsys, main(argv), "no sequence column 'line'")
    assert main([*argv, "--sequence-column", "text"]) == 0


def test_train_rejects_missing_labels(speaker_csv, tmp_path, capsys):
    path = tmp_path / "gaps.csv"
    lines = speaker_csv.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ","
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["classify", "train", "--data", str(path), "--out", str(out)]
    code = main([*argv, "--sequence-column", "line", "--label-column", "kind"])
    assert_one_line_error(capsys, code, "row 3 has no label in column 'kind'")
    assert not out.exists()


def test_train_rejects_missing_label_column(speaker_csv, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["classify", "train", "--data", str(speaker_csv), "--out", str(out)]
    code = main([*argv, "--sequence-column", "line"])
    assert_one_line_error(capsys, code, "no label column 'label'", "--label-column")
    assert not out.exists()


def test_train_rejects_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.csv"
    path.write_text("")
    out = tmp_path / "out"
    code = main(["classify", "train", "--data", str(path), "--out", str(out)])
    assert_one_line_error(capsys, code, "no data rows")
    assert not out.exists()


def test_train_rejects_invalid_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.csv"
    path.write_bytes("sequence,label\ncaf\u00e9,a\n".encode("latin-1"))
    out = tmp_path / "out"
    code = main(["classify", "train", "--data", str(path), "--out", str(out)])
    assert_one_line_error(capsys, code, "not valid UTF-8")
    assert not out.exists()


def test_train_rejects_too_few_rows(tmp_path, capsys):
    path = tmp_path / "two.csv"
    path.write_text("sequence,label\nab,x\ncd,y\n")
    out = tmp_path / "out"
    code = main(["classify", "train", "--data", str(path), "--out", str(out)])
    assert_one_line_error(capsys, code, "too few to split")
    assert not out.exists()


def test_train_rejects_bad_settings(tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["--hidden", "0"], "hidden_size of at least 1"),
        (["--test-fraction", "1.5"], "test_fraction in (0, 1)"),
        (["--batch", "0"], "batch_size of at least 1"),
    ]
    for extra, message in cases:
        code = main(["classify", "train", "--out", str(out), *extra])
        assert_one_line_error(capsys, code, message)
    assert not out.exists()


def test_predict_rejects_other_checkpoint(tmp_path, capsys):
    from rnnkit.tasks.text.checkpoint import LANGUAGE_MODEL_FORMAT, save_checkpoint

    path = tmp_path / "lm.pt"
    save_checkpoint({"format": LANGUAGE_MODEL_FORMAT, "format_version": 1}, path)
    out = tmp_path / "predictions.csv"
    code = main(["classify", "predict", "--checkpoint", str(path), "--out", str(out)])
    assert_one_line_error(capsys, code, "rnnkit-sequence-classifier")
    assert not out.exists()


def test_predict_reads_kind_from_checkpoint(trained, tmp_path, capsys):
    data = tmp_path / "numbers.csv"
    data.write_text("line\n1 2 3\n")
    out = tmp_path / "predictions.csv"
    argv = ["classify", "predict", "--checkpoint", str(trained / "classifier.pt")]
    argv += ["--data", str(data), "--sequence-column", "line", "--out", str(out)]
    assert main(argv) == 0
    # A text classifier reads "1 2 3" as text, because the kind comes from
    # the checkpoint.
    with out.open(newline="") as file:
        assert len(list(csv.DictReader(file))) == 1


def test_predict_text_model_rejects_builtin_digits(trained, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    argv = ["classify", "predict", "--checkpoint", str(trained / "classifier.pt")]
    code = main([*argv, "--out", str(out)])
    assert_one_line_error(capsys, code, "reads text sequences", "--data")
    assert not out.exists()


def test_train_rejects_single_class(tmp_path, capsys):
    path = tmp_path / "one.csv"
    path.write_text("sequence,label\nab,x\ncd,x\nef,x\ngh,x\n")
    out = tmp_path / "out"
    code = main(["classify", "train", "--data", str(path), "--out", str(out)])
    assert_one_line_error(capsys, code, "at least 2 classes", "'x'")
    assert not out.exists()


def test_predict_warns_of_labels_never_trained(trained, tmp_path, capsys):
    data = tmp_path / "relabelled.csv"
    data.write_text("line,kind\nKING RICHARD III:,king\nGood morrow.,speech\n")
    out = tmp_path / "predictions.csv"
    argv = ["classify", "predict", "--checkpoint", str(trained / "classifier.pt")]
    argv += ["--data", str(data), "--sequence-column", "line"]
    argv += ["--label-column", "kind", "--out", str(out)]
    assert main(argv) == 0
    error = capsys.readouterr().err
    assert "1 label(s) in the data were not among the classes" in error
    assert "speaker, speech): king" in error
