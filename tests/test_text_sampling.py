"""Sampling text from a trained character language model."""

from pathlib import Path

import pytest
import torch

from rnnkit.tasks.text.language_model import TrainSettings, train_language_model
from rnnkit.tasks.text.model import CharLanguageModel, LanguageModelConfig
from rnnkit.tasks.text.sampling import (
    generate,
    next_distribution,
    sampling_distribution,
)
from rnnkit.tasks.text.vocabulary import Vocabulary

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXT = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and on a busy machine the
    # thread pool's waiting slows them several times over.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained():
    config = LanguageModelConfig(0, num_layers=2, hidden_size=32, embedding_size=16)
    settings = TrainSettings(seq_len=32, batch_size=16, max_steps=30, eval_every=30)
    model, vocabulary, _ = train_language_model(TEXT, config, settings)
    return model, vocabulary


def test_same_seed_repeats_sample(trained):
    model, vocabulary = trained
    first = generate(model, vocabulary, "ROMEO:", 60, seed=7)
    second = generate(model, vocabulary, "ROMEO:", 60, seed=7)
    assert first == second
    assert len(first) == 60
    assert set(first) <= set(vocabulary.symbols)


def test_different_seeds_differ(trained):
    model, vocabulary = trained
    first = generate(model, vocabulary, "ROMEO:", 60, seed=1)
    second = generate(model, vocabulary, "ROMEO:", 60, seed=2)
    assert first != second


def test_top_k_one_is_greedy_decoding(trained):
    # Oracle: re-read the whole text so far at every step and take the most
    # likely next character, with no state carried between calls.
    model, vocabulary = trained
    text = "First"
    expected = ""
    for _ in range(25):
        probabilities = next_distribution(model, vocabulary, text + expected)
        expected += vocabulary.symbols[int(probabilities.argmax())]
    assert generate(model, vocabulary, text, 25, top_k=1, seed=0) == expected


def test_sampling_distribution_matches_definition():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    expected = torch.exp(logits / 0.5) / torch.exp(logits / 0.5).sum()
    torch.testing.assert_close(sampling_distribution(logits, 0.5), expected)

    top = torch.exp(logits[:2] / 2.0) / torch.exp(logits[:2] / 2.0).sum()
    expected_top = torch.cat([top, torch.zeros(2)])
    torch.testing.assert_close(sampling_distribution(logits, 2.0, 2), expected_top)


def test_sampled_frequencies_follow_distribution():
    # A model whose output ignores its input: the head's bias alone sets the
    # logits, so every step draws from one known distribution.
    model = CharLanguageModel(LanguageModelConfig(3, num_layers=1, hidden_size=4))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.log(torch.tensor([0.6, 0.3, 0.1])))
    vocabulary = Vocabulary("characters", ("a", "b", "c"))
    sample = generate(model, vocabulary, "a", 1000, seed=0)
    counts = torch.tensor([sample.count(c) for c in "abc"], dtype=torch.float64)
    torch.testing.assert_close(
        counts / 1000,
        torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64),
        atol=0.05,
        rtol=0,
    )


def test_prompt_outside_vocabulary_is_rejected(trained):
    model, vocabulary = trained
    with pytest.raises(ValueError, match=r"not in the model's vocabulary: '\\x00'"):
        generate(model, vocabulary, "ROMEO\x00", 10, seed=0)


def test_empty_prompt_is_rejected(trained):
    model, vocabulary = trained
    with pytest.raises(ValueError, match="prompt of at least one character"):
        generate(model, vocabulary, "", 10, seed=0)


def test_bad_sampling_options_are_rejected(trained):
    model, vocabulary = trained
    with pytest.raises(ValueError, match="temperature greater than 0"):
        generate(model, vocabulary, "A", 5, temperature=0.0)
    with pytest.raises(ValueError, match="top-k between 1 and"):
        generate(model, vocabulary, "A", 5, top_k=0)
    with pytest.raises(ValueError, match="top-k between 1 and"):
        generate(model, vocabulary, "A", 5, top_k=len(vocabulary) + 1)
    with pytest.raises(ValueError, match="length of at least 0"):
        generate(model, vocabulary, "A", -1)


def test_byte_model_accepts_any_prompt():
    corpus = TEXT[:6000].encode("utf-8")
    config = LanguageModelConfig(0, num_layers=1, hidden_size=16, embedding_size=8)
    settings = TrainSettings(seq_len=16, batch_size=8, max_steps=5, eval_every=5)
    model, vocabulary, _ = train_language_model(corpus, config, settings)
    sample = generate(model, vocabulary, "\u00fcber \u2713", 40, seed=3)
    assert sample == generate(model, vocabulary, "\u00fcber \u2713", 40, seed=3)
    assert isinstance(sample, str)
