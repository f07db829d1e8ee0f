"""Resuming the language model: mid-epoch state, and the text train command."""

from pathlib import Path

import pytest
import torch

from rnnkit.cli import main
from rnnkit.resume import load_run_state
from rnnkit.tasks.text.language_model import TrainSettings, train_language_model
from rnnkit.tasks.text.model import LanguageModelConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare.txt"


def read_text(characters):
    with open(SHAKESPEARE, encoding="utf-8") as handle:
        return handle.read(characters)


def train(text, **resume_options):
    # Dropout draws from torch's generator, the LSTM carries an (h, c) state
    # across chunks, and a high learning rate makes the scheduler lower it, so
    # all three must be restored for equal weights.
    config = LanguageModelConfig(0, cell="lstm", num_layers=2, hidden_size=12,
                                 embedding_size=6, dropout=0.2)  # fmt: skip
    settings = TrainSettings(seq_len=10, batch_size=4, epochs=2, eval_every=6,
                             patience=100, lr_patience=0,
                             learning_rate=0.02)  # fmt: skip
    return train_language_model(text, config, settings, **resume_options)


def test_language_model_resumes_mid_epoch_and_end():
    text = read_text(1600)
    states = []
    model, _, result = train(text, save_state=states.append)
    middle = states[2]
    assert middle["extra"]["chunks_done"] < result.steps // 2

    for saved in (middle, states[-1]):
        resumed_model, _, resumed = train(text, resume_from=saved)

        assert resumed.history == result.history
        assert resumed.best_step == result.best_step
        assert resumed.stop_reason == result.stop_reason
        for name, tensor in model.state_dict().items():
            assert torch.equal(resumed_model.state_dict()[name], tensor), name
    learning_rates = {s["optimizer"]["param_groups"][0]["lr"] for s in states}
    assert len(learning_rates) > 1


def text_options(data, out):
    return ["text", "train", "--data", str(data), "--out", str(out), "--quiet",
            "--epochs", "1", "--hidden", "8", "--layers", "1", "--embedding", "4",
            "--seq-len", "10", "--batch", "4", "--eval-every", "10"]  # fmt: skip


def test_text_train_resume_continues_run(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(read_text(4000), encoding="utf-8")
    full, partial = tmp_path / "full", tmp_path / "partial"
    assert main(text_options(data, full)) == 0
    saved = load_run_state(full / "resume.pt")["current"]["training"]
    assert saved["extra"]["result"]["stop_reason"] == "epochs"

    # A run resumed from its own final state trains no further step.
    code = main([*text_options(data, partial), "--resume", str(full / "resume.pt")])

    assert code == 0
    want = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    got = torch.load(partial / "model.pt", weights_only=True)["state_dict"]
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


def test_text_train_resume_rejects_other_options(tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text(read_text(4000), encoding="utf-8")
    out = tmp_path / "out"
    assert main(text_options(data, out)) == 0
    capsys.readouterr()

    options = text_options(data, out)
    options[options.index("--hidden") + 1] = "9"
    code = main([*options, "--resume", str(out / "resume.pt")])

    assert code == 2
    assert "hidden_size" in capsys.readouterr().err


def test_text_train_rejects_too_few_streams(tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text(read_text(4000), encoding="utf-8")
    options = text_options(data, tmp_path / "out")
    options[options.index("--batch") + 1] = "1"

    code = main([*options, "--devices", "2"])

    assert code == 2
    assert "1 streams for 2 processes" in capsys.readouterr().err


@pytest.mark.slow
def test_text_train_two_processes_match_one(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(read_text(8000), encoding="utf-8")
    one, two = tmp_path / "one", tmp_path / "two"

    assert main(text_options(data, one)) == 0
    assert main([*text_options(data, two), "--devices", "2"]) == 0

    history = [
        load_run_state(out / "resume.pt")["current"]["training"]["extra"]["result"][
            "history"
        ]
        for out in (one, two)
    ]
    assert len(history[0]) == len(history[1]) > 1
    for one_row, two_row in zip(*history, strict=True):
        step, train_one, val_one = one_row
        _, train_two, val_two = two_row
        assert val_two == pytest.approx(val_one, rel=1e-5), step
        assert train_two == pytest.approx(train_one, rel=1e-5), step
