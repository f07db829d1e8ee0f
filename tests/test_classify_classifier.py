"""Training, scoring and reloading the sequence classifier."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix

from rnnkit.tasks.text.classifier import (
    ClassifierSettings,
    SequenceEncoder,
    load_classifier,
    predict,
    score,
    split_rows,
    train_classifier,
)
from rnnkit.tasks.text.model import ClassifierConfig, SequenceClassifier
from rnnkit.tasks.text.sequences import (
    NUMBERS,
    TEXT,
    SequenceData,
    load_builtin_digits,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and on a busy machine the
    # thread pool's waiting slows them several times over.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
    data = load_builtin_digits()
    config = ClassifierConfig(0, hidden_size=32)
    settings = ClassifierSettings(epochs=2)
    model, encoder, result = train_classifier(
        data, config, settings, checkpoint_path=path
    )
    return data, model, encoder, result, path


def speaker_lines() -> SequenceData:
    """Return lines of the play labelled 'speaker' (a name and a colon) or 'speech'."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:15000]
    lines = [line for line in text.splitlines() if line.strip()]
    labels = ["speaker" if line.endswith(":") else "speech" for line in lines]
    return SequenceData(lines, labels, TEXT, "lines", list(range(1, len(lines) + 1)))


def test_digits_classifier_beats_majority(digits_model):
    _, _, _, result, _ = digits_model
    test = result.test
    assert test.count == round(1797 * 0.2)
    assert test.accuracy > test.majority_accuracy + 0.3
    assert test.accuracy > 0.5


def test_text_classifier_beats_majority():
    data = speaker_lines()
    config = ClassifierConfig(0, cell="gru", hidden_size=16, embedding_size=8)
    settings = ClassifierSettings(epochs=3, learning_rate=1e-2)
    _, encoder, result = train_classifier(data, config, settings)
    assert encoder.kind == TEXT
    assert result.test.accuracy > result.test.majority_accuracy + 0.1


def test_padded_batch_matches_single_rows():
    # Oracle: each sequence run alone, with no padding at all.
    data = load_builtin_digits()
    sequences = [data.sequences[0][:3], data.sequences[1], data.sequences[2][:1]]
    encoder = SequenceEncoder.fit(data, list(range(100)))
    torch.manual_seed(0)
    model = SequenceClassifier(ClassifierConfig(10, num_layers=2, input_size=8))
    model.eval()
    inputs, lengths = encoder.batch(sequences)
    assert lengths.tolist() == [3, 8, 1]
    batched = model(inputs, lengths)
    for row, sequence in enumerate(sequences):
        alone, alone_lengths = encoder.batch([sequence])
        torch.testing.assert_close(batched[row], model(alone, alone_lengths)[0])


def test_numbers_are_standardised_with_training_statistics():
    data = load_builtin_digits()
    rows = list(range(50))
    encoder = SequenceEncoder.fit(data, rows)
    steps = np.concatenate([data.sequences[i] for i in rows])
    std = steps.std(axis=0)
    std[std == 0] = 1.0
    inputs, _ = encoder.batch([data.sequences[60]])
    expected = (data.sequences[60] - steps.mean(axis=0)) / std
    np.testing.assert_allclose(inputs[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_unknown_characters_map_to_id_zero():
    data = SequenceData(["abc", "cab"], ["x", "y"], TEXT, "test", [1, 2])
    encoder = SequenceEncoder.fit(data, [0, 1])
    inputs, lengths = encoder.batch(["cz", "b"])
    assert inputs.tolist() == [[3, 0], [2, 0]]
    assert lengths.tolist() == [2, 1]


def test_encoder_rejects_other_feature_count():
    data = load_builtin_digits()
    encoder = SequenceEncoder.fit(data, [0, 1])
    with pytest.raises(ValueError, match="expected 8 numbers per step, as in training"):
        encoder.batch([np.zeros((3, 2), dtype=np.float32)])


def test_score_matches_sklearn():
    labels = ["a", "b", "b", "c", "a", "c", "c"]
    predicted = ["a", "b", "c", "c", "b", "c", "a"]
    classes = ["a", "b", "c"]
    evaluation = score(labels, predicted, classes, majority="c")
    assert evaluation.accuracy == pytest.approx(accuracy_score(labels, predicted))
    expected = confusion_matrix(labels, predicted, labels=classes).tolist()
    assert evaluation.confusion == expected
    assert evaluation.majority_accuracy == pytest.approx(3 / 7)


def test_score_adds_unknown_true_labels():
    evaluation = score(["a", "z"], ["a", "a"], ["a", "b"], majority="a")
    assert evaluation.classes == ["a", "b", "z"]
    assert evaluation.confusion == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert evaluation.accuracy == 0.5


def test_split_rows_partitions_all_rows():
    parts = split_rows(100, ClassifierSettings(seed=3))
    assert len(parts["test"]) == 20
    assert len(parts["validation"]) == 10
    assert len(parts["train"]) == 70
    every = parts["test"] + parts["validation"] + parts["train"]
    assert sorted(every) == list(range(100))
    assert split_rows(100, ClassifierSettings(seed=3)) == parts


def test_split_rows_rejects_too_few_rows():
    with pytest.raises(ValueError, match="too few to split"):
        split_rows(2, ClassifierSettings())


def test_training_rejects_bad_labels():
    unlabelled = SequenceData(["ab", "cd", "ef"], None, TEXT, "test", [1, 2, 3])
    with pytest.raises(ValueError, match="got no labels"):
        train_classifier(unlabelled)
    one_class = SequenceData(["ab", "cd", "ef"], ["x"] * 3, TEXT, "test", [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2 classes.*'x'"):
        train_classifier(one_class)


def test_settings_reject_bad_values():
    cases = [
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": 0.6, "validation_fraction": 0.4}, "below 1"),
        ({"learning_rate": -1.0}, "learning rate"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            ClassifierSettings(**change).check()


def test_checkpoint_reload_predicts_the_same(digits_model):
    data, model, encoder, result, path = digits_model
    loaded, loaded_encoder, classes, payload = load_classifier(path)
    assert classes == [str(digit) for digit in range(10)]
    assert loaded_encoder.kind == NUMBERS
    assert payload["result"]["test"]["accuracy"] == result.test.accuracy
    sequences = data.sequences[:300]
    expected = predict(model, encoder, sequences)
    actual = predict(loaded, loaded_encoder, sequences)
    assert actual[0] == expected[0]
    np.testing.assert_allclose(actual[1], expected[1], rtol=1e-6)


def test_checkpoint_loads_with_weights_only(digits_model):
    path = digits_model[4]
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "rnnkit-sequence-classifier"
    assert payload["encoder"]["kind"] == NUMBERS
    assert len(payload["encoder"]["mean"]) == 8
    assert payload["settings"]["epochs"] == 2


def test_kernel_load_is_not_training_time(slow_kernel_load):
    # A first-use compile of the fused kernels happens before the training
    # clock starts.
    config = ClassifierConfig(0, cell="gru", hidden_size=8, embedding_size=4)
    settings = ClassifierSettings(epochs=1)
    _, _, result = train_classifier(speaker_lines(), config, settings)
    assert len(slow_kernel_load.calls) == 1
    assert result.seconds < slow_kernel_load.seconds
