"""Training, checkpointing and reloading the character language model."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit.tasks.text import checkpoint, streams
from rnnkit.tasks.text.language_model import (
    TrainSettings,
    evaluate,
    fit,
    load_language_model,
    prepare_text,
    train_language_model,
    train_step,
)
from rnnkit.tasks.text.model import CharLanguageModel, LanguageModelConfig
from rnnkit.tasks.text.sampling import next_distribution

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXT = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
TINY = LanguageModelConfig(
    0, cell="lstm", num_layers=1, hidden_size=32, embedding_size=16
)
SHORT = TrainSettings(seq_len=32, batch_size=16, max_steps=60, eval_every=20)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and on a busy machine the
    # thread pool's waiting slows them several times over.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("lm") / "model.pt"
    model, vocabulary, result = train_language_model(
        TEXT, TINY, SHORT, checkpoint_path=path
    )
    return model, vocabulary, result, path


def test_validation_loss_falls(trained):
    model, vocabulary, result, _ = trained
    prepared = prepare_text(TEXT, SHORT)
    torch.manual_seed(SHORT.seed)
    untrained = CharLanguageModel(
        LanguageModelConfig(**{**TINY.to_dict(), "vocab_size": len(vocabulary)})
    )
    initial = evaluate(untrained, prepared.val_streams, SHORT.seq_len)
    assert result.best_val_loss < initial - 0.3
    val_losses = [val for _, _, val in result.history]
    assert val_losses[-1] < val_losses[0]
    assert result.steps == 60
    assert result.stop_reason == "max steps"


def test_bpc_is_loss_over_ln2(trained):
    result = trained[2]
    assert result.best_val_bpc == pytest.approx(result.best_val_loss / math.log(2))


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_learn(cell):
    config = LanguageModelConfig(
        0, cell=cell, num_layers=2, hidden_size=24, embedding_size=8
    )
    settings = TrainSettings(seq_len=32, batch_size=16, max_steps=40, eval_every=40)
    model, vocabulary, result = train_language_model(TEXT, config, settings)
    assert isinstance(model.recurrent, {"gru": rnnkit.GRU, "rnn": rnnkit.RNN}[cell])
    assert result.best_val_loss < math.log(len(vocabulary)) - 0.3


def test_evaluate_carries_state_across_chunks(trained):
    # The oracle reads each stream in one piece, so any state lost between
    # chunks would change the loss.
    model, vocabulary, _, _ = trained
    laid_out = streams.make_streams(vocabulary.encode(TEXT[:2001]), 4)
    chunked = evaluate(model, laid_out, 7)
    with torch.no_grad():
        logits, _ = model(laid_out[:-1])
        whole = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), laid_out[1:].reshape(-1)
        )
    assert chunked == pytest.approx(whole.item(), rel=1e-5)


def test_train_step_detaches_state():
    vocabulary_size = 10
    model = CharLanguageModel(
        LanguageModelConfig(vocabulary_size, hidden_size=8, embedding_size=4)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = torch.randint(0, vocabulary_size, (5, 3))
    state = (torch.zeros(2, 3, 8, requires_grad=True), torch.zeros(2, 3, 8))
    loss, new_state = train_step(model, optimizer, inputs, inputs, state, 1.0)
    assert math.isfinite(loss)
    assert state[0].grad is None
    assert all(not s.requires_grad for s in new_state)


def test_gradient_is_clipped():
    model = CharLanguageModel(LanguageModelConfig(10, hidden_size=8, embedding_size=4))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    inputs = torch.randint(0, 10, (6, 2))
    train_step(model, optimizer, inputs, inputs, None, 1e-3)
    # With plain SGD and lr 1, the update is minus the clipped gradient.
    change = torch.cat(
        [
            (p.detach() - b).flatten()
            for p, b in zip(model.parameters(), before, strict=True)
        ]
    )
    assert change.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_early_stopping_after_patience():
    # A learning rate of 1e-12 leaves float32 weights unchanged, so the
    # validation loss never improves after the first evaluation.
    settings = TrainSettings(
        seq_len=16,
        batch_size=8,
        max_steps=100,
        eval_every=2,
        patience=3,
        learning_rate=1e-12,
    )
    model, _, result = train_language_model(TEXT[:5000], TINY, settings)
    assert result.stop_reason == "early stopping"
    assert result.steps == 8
    assert result.best_step == 2
    assert len(result.history) == 4


def test_epochs_bound_training():
    settings = TrainSettings(seq_len=50, batch_size=8, epochs=2)
    prepared = prepare_text(TEXT[:5000], settings)
    per_epoch = streams.count_chunks(prepared.train_streams, 50)
    _, _, result = train_language_model(prepared, TINY, settings)
    assert result.steps == 2 * per_epoch
    assert result.stop_reason == "epochs"
    assert len(result.history) == 2


def test_best_weights_are_kept():
    # A learning rate this large makes the loss jump around; the model
    # returned must score the best validation loss seen, not the last one.
    settings = TrainSettings(
        seq_len=16,
        batch_size=8,
        max_steps=12,
        eval_every=2,
        learning_rate=0.5,
        patience=10,
    )
    prepared = prepare_text(TEXT[:5000], settings)
    model, _, result = train_language_model(prepared, TINY, settings)
    assert evaluate(model, prepared.val_streams, 16) == pytest.approx(
        result.best_val_loss, rel=1e-6
    )


def test_prepare_text_rejects_long_sequence():
    with pytest.raises(
        ValueError, match="sequence length 2000 is longer than the data"
    ):
        prepare_text(TEXT[:5000], TrainSettings(seq_len=2000, batch_size=4))


def test_settings_reject_bad_values():
    cases = [
        ({"seq_len": 0}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_steps": 0}, "max_steps"),
        ({"learning_rate": 0.0}, "learning rate"),
        ({"max_grad_norm": -1.0}, "gradient-norm"),
        ({"patience": 0}, "patience"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            prepare_text(TEXT[:5000], TrainSettings(**change))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="cell kind"):
        CharLanguageModel(LanguageModelConfig(10, cell="transformer"))
    with pytest.raises(ValueError, match="hidden_size of at least 1"):
        CharLanguageModel(LanguageModelConfig(10, hidden_size=0))
    with pytest.raises(ValueError, match="dropout"):
        CharLanguageModel(LanguageModelConfig(10, dropout=1.0))


def test_checkpoint_loads_with_weights_only(trained):
    _, vocabulary, result, path = trained
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == checkpoint.LANGUAGE_MODEL_FORMAT
    assert payload["rnnkit_version"] == rnnkit.__version__
    assert payload["vocabulary"] == vocabulary.to_dict()
    assert payload["model"]["hidden_size"] == 32
    assert payload["settings"]["seq_len"] == 32
    assert payload["result"]["best_val_loss"] == result.best_val_loss


def test_checkpoint_reload_gives_same_distribution(trained):
    model, vocabulary, _, path = trained
    loaded, loaded_vocabulary, _ = load_language_model(path)
    assert loaded_vocabulary == vocabulary
    for prompt in ("ROMEO:", "First Citizen:\nWe"):
        expected = next_distribution(model, vocabulary, prompt)
        actual = next_distribution(loaded, loaded_vocabulary, prompt)
        assert torch.equal(actual, expected)


def test_byte_model_trains_and_reloads(tmp_path):
    corpus = TEXT[:6000].encode("utf-8")
    settings = TrainSettings(seq_len=16, batch_size=8, max_steps=10, eval_every=5)
    path = tmp_path / "bytes.pt"
    model, vocabulary, _ = train_language_model(
        corpus, TINY, settings, checkpoint_path=path
    )
    loaded, loaded_vocabulary, _ = load_language_model(path)
    assert loaded_vocabulary.kind == "bytes"
    assert torch.equal(
        next_distribution(loaded, loaded_vocabulary, "caf\u00e9"),
        next_distribution(model, vocabulary, "caf\u00e9"),
    )


class Unsaveable:
    """An object whose pickling fails, to interrupt ``torch.save`` mid-write."""

    def __reduce__(self):
        raise TypeError("this object cannot be pickled")


def test_save_checkpoint_failure_keeps_old_file(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save_checkpoint({"format": "old"}, path)
    with pytest.raises(TypeError, match="cannot be pickled"):
        checkpoint.save_checkpoint({"format": "new", "bad": Unsaveable()}, path)
    assert torch.load(path, weights_only=True) == {"format": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_load_checkpoint_rejects_other_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable rnnkit checkpoint"):
        load_language_model(garbage)
    other = tmp_path / "other.pt"
    checkpoint.save_checkpoint({"format": checkpoint.CLASSIFIER_FORMAT}, other)
    with pytest.raises(ValueError, match="expected format"):
        load_language_model(other)
    newer = tmp_path / "newer.pt"
    checkpoint.save_checkpoint(
        {"format": checkpoint.LANGUAGE_MODEL_FORMAT, "format_version": 99}, newer
    )
    with pytest.raises(ValueError, match="format version 99"):
        load_language_model(newer)
    with pytest.raises(FileNotFoundError):
        load_language_model(tmp_path / "absent.pt")


def test_fit_calls_on_improvement_with_best_weights():
    settings = TrainSettings(seq_len=16, batch_size=8, max_steps=6, eval_every=2)
    prepared = prepare_text(TEXT[:5000], settings)
    torch.manual_seed(0)
    model = CharLanguageModel(
        LanguageModelConfig(
            **{**TINY.to_dict(), "vocab_size": len(prepared.vocabulary)}
        )
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    seen = []

    def record(result):
        loss = evaluate(model, prepared.val_streams, 16)
        seen.append((result.best_step, result.best_val_loss, loss))

    result = fit(model, optimizer, prepared, settings, on_improvement=record)
    assert seen
    for best_step, best_val_loss, loss in seen:
        assert best_step in (2, 4, 6)
        assert loss == pytest.approx(best_val_loss, rel=1e-6)
    assert seen[-1][0] == result.best_step


def test_kernel_load_is_not_training_time(slow_kernel_load):
    # A first-use compile of the fused kernels happens before the training
    # clock starts.
    settings = TrainSettings(seq_len=16, batch_size=8, max_steps=2)
    _, _, result = train_language_model(TEXT[:5000], TINY, settings)
    assert len(slow_kernel_load.calls) == 1
    assert result.seconds < slow_kernel_load.seconds
