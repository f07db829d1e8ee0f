"""The ``rnnkit text train`` and ``rnnkit text generate`` commands end to end."""

import io
import json
import math
from pathlib import Path

import pytest
import torch

from rnnkit.cli import main
from rnnkit.cli.text import StepProgressBar
from rnnkit.tasks.text.language_model import Progress, load_language_model
from rnnkit.tasks.text.sampling import next_distribution

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare.txt"
TINY = ["--layers", "1", "--hidden", "24", "--embedding", "8", "--batch", "8"]


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and on a busy machine the
    # thread pool's waiting slows them several times over.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "slice.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:8000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["text", "train", "--data", str(corpus), "--out", str(out), "--quiet"]
    argv += [*TINY, "--seq-len", "20", "--max-steps", "20", "--eval-every", "10"]
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


def test_train_writes_checkpoint_and_results(trained):
    assert (trained / "model.pt").is_file()
    results = json.loads((trained / "results.json").read_text())
    assert results["result"]["steps"] == 20
    assert results["model"]["hidden_size"] == 24
    assert results["vocabulary"]["kind"] == "characters"
    history = results["result"]["history"]
    assert history[-1][2] < history[0][2]
    assert [p.name for p in trained.iterdir() if p.name.startswith(".")] == []


def test_train_prints_summary_and_progress(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["text", "train", "--data", str(corpus), "--out", str(out), *TINY]
    argv += ["--seq-len", "20", "--max-steps", "4", "--eval-every", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "best validation loss" in captured.out
    assert "bpc" in captured.out
    # stderr is not a terminal here, so the bar writes one line per evaluation.
    progress = [line for line in captured.err.splitlines() if line.startswith("step")]
    assert len(progress) == 2
    assert "val" in progress[-1]


def test_quiet_silences_progress(corpus, tmp_path, capsys):
    argv = ["text", "train", "--data", str(corpus), "--out", str(tmp_path / "o")]
    argv += [*TINY, "--seq-len", "20", "--max-steps", "2", "--quiet"]
    assert main(argv) == 0
    assert "step" not in capsys.readouterr().err


def test_generate_repeats_with_seed(trained, capsys):
    argv = ["text", "generate", "--checkpoint", str(trained / "model.pt")]
    argv += ["--prompt", "ROMEO:", "--length", "40", "--seed", "5", "--top-k", "10"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert first == second
    assert first.startswith("ROMEO:")
    assert len(first) == len("ROMEO:") + 40 + 1


def test_generate_default_prompt(trained, capsys):
    argv = ["text", "generate", "--checkpoint", str(trained / "model.pt")]
    assert main([*argv, "--length", "10", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("\n")


def test_reloaded_checkpoint_gives_same_distribution(corpus, tmp_path):
    # Oracle: the model in memory at the end of training, against the file.
    from rnnkit.tasks.text.language_model import TrainSettings, train_language_model
    from rnnkit.tasks.text.model import LanguageModelConfig
    from rnnkit.tasks.text.vocabulary import read_corpus

    path = tmp_path / "model.pt"
    config = LanguageModelConfig(0, num_layers=1, hidden_size=16, embedding_size=8)
    settings = TrainSettings(seq_len=20, batch_size=8, max_steps=6, eval_every=3)
    model, vocabulary, _ = train_language_model(
        read_corpus(corpus), config, settings, checkpoint_path=path
    )
    loaded, loaded_vocabulary, _ = load_language_model(path)
    torch.testing.assert_close(
        next_distribution(loaded, loaded_vocabulary, "Citizen"),
        next_distribution(model, vocabulary, "Citizen"),
        rtol=0,
        atol=0,
    )


def test_generate_rejects_prompt_outside_vocabulary(trained, capsys):
    argv = ["text", "generate", "--checkpoint", str(trained / "model.pt")]
    code = main([*argv, "--prompt", "hello \u2603"])
    assert_one_line_error(capsys, code, "not in the model's vocabulary", "'\u2603'")


def test_generate_rejects_bad_options(trained, capsys):
    argv = ["text", "generate", "--checkpoint", str(trained / "model.pt")]
    code = main([*argv, "--temperature", "0"])
    assert_one_line_error(capsys, code, "temperature greater than 0")
    code = main([*argv, "--top-k", "0"])
    assert_one_line_error(capsys, code, "top-k between 1 and")


def test_generate_rejects_missing_checkpoint(tmp_path, capsys):
    code = main(["text", "generate", "--checkpoint", str(tmp_path / "none.pt")])
    assert_one_line_error(capsys, code, "checkpoint not found")


def test_train_rejects_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.txt"
    path.write_text("")
    out = tmp_path / "out"
    code = main(["text", "train", "--data", str(path), "--out", str(out)])
    assert_one_line_error(capsys, code, "is empty")
    assert not out.exists()


def test_train_rejects_invalid_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    text = SHAKESPEARE.read_text(encoding="utf-8")[:3000] + "caf\u00e9"
    path.write_bytes(text.encode("latin-1"))
    out = tmp_path / "out"
    code = main(["text", "train", "--data", str(path), "--out", str(out)])
    assert_one_line_error(capsys, code, "not valid UTF-8", "--bytes")
    assert not out.exists()


def test_train_bytes_accepts_invalid_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    text = SHAKESPEARE.read_text(encoding="utf-8")[:3000] + "caf\u00e9"
    path.write_bytes(text.encode("latin-1"))
    out = tmp_path / "out"
    argv = ["text", "train", "--data", str(path), "--out", str(out), "--bytes"]
    argv += [*TINY, "--seq-len", "20", "--max-steps", "2", "--quiet"]
    assert main(argv) == 0
    _, vocabulary, _ = load_language_model(out / "model.pt")
    assert vocabulary.kind == "bytes"


def test_train_rejects_long_sequence(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["text", "train", "--data", str(corpus), "--out", str(out)]
    code = main([*argv, "--seq-len", "5000", "--batch", "4"])
    assert_one_line_error(capsys, code, "sequence length 5000 is longer than")
    assert not out.exists()


def test_train_rejects_bad_sizes(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["text", "train", "--data", str(corpus), "--out", str(out)]
    cases = [
        (["--hidden", "0"], "hidden_size of at least 1"),
        (["--seq-len", "0"], "seq_len of at least 1"),
        (["--dropout", "1.5"], "dropout in [0, 1)"),
        (["--lr", "0"], "positive learning rate"),
    ]
    for extra, message in cases:
        code = main([*argv, *extra])
        assert_one_line_error(capsys, code, message)
    assert not out.exists()


def test_train_rejects_missing_file(tmp_path, capsys):
    code = main(["text", "train", "--data", str(tmp_path / "absent.txt")])
    assert_one_line_error(capsys, code, "absent.txt")


def test_epochs_and_max_steps_exclude_each_other(corpus, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "text",
                "train",
                "--data",
                str(corpus),
                "--epochs",
                "1",
                "--max-steps",
                "2",
            ]
        )
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


class Terminal(io.StringIO):
    """A text stream that reports itself as a terminal."""

    def isatty(self):
        return True


def test_progress_bar_redraws_one_line_on_terminal():
    stream = Terminal()
    bar = StepProgressBar(stream, per_second=1e9)
    for step in (1, 2):
        bar(Progress(step, 2, 1, 2.0, None, math.inf, 0.5))
    bar(Progress(2, 2, 1, 2.0, 1.0, 1.0, 0.6))
    bar.finish()
    text = stream.getvalue()
    assert text.count("\r") == 3
    assert text.count("\n") == 1
    assert text.endswith("\n")
    assert "val 1.0000 (1.443 bpc)" in text
    assert "loss 2.0000 (2.885 bpc)" in text


def test_progress_bar_writes_lines_to_file():
    stream = io.StringIO()
    bar = StepProgressBar(stream)
    bar(Progress(1, 4, 1, 2.0, None, math.inf, 0.1))
    bar(Progress(2, 4, 1, 2.0, 1.5, 1.5, 0.2))
    bar.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("step      2/4 [##########..........]")
