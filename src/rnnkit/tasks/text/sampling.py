"""Sample text from a trained language model.

The model first reads the prompt, which sets its state; then each sampled
symbol is fed back as the next input. Sampling draws from
softmax(logits / temperature), restricted to the ``top_k`` most likely symbols
when ``top_k`` is given.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.tasks.text.model import CharLanguageModel
from rnnkit.tasks.text.vocabulary import Vocabulary


def check_sampling(temperature: float, top_k: int | None, vocab_size: int) -> None:
    """Raise ``ValueError`` for a temperature or top-k outside its range."""
    if not temperature > 0:
        raise ValueError(f"expected a temperature greater than 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(
            f"expected top-k between 1 and the vocabulary size {vocab_size}, "
            f"got {top_k}"
        )


def sampling_distribution(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None
) -> Tensor:
    """Return the probabilities (V,) that sampling draws from, given logits (V,)."""
    scaled = logits / temperature
    if top_k is not None and top_k < scaled.numel():
        threshold = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < threshold, float("-inf"))
    return torch.softmax(scaled, dim=-1)


@torch.no_grad()
def warm_up(model: CharLanguageModel, vocabulary: Vocabulary, prompt: str | bytes):
    """Read the prompt; return the logits (V,) for the next symbol and the state.

    Raises ``ValueError`` for an empty prompt or one with symbols outside the
    vocabulary.
    """
    if len(prompt) == 0:
        raise ValueError("expected a prompt of at least one character, got ''")
    ids = vocabulary.encode(prompt)
    model.eval()
    logits, state = model(ids.unsqueeze(1))
    return logits[-1, 0], state


def next_distribution(
    model: CharLanguageModel, vocabulary: Vocabulary, prompt: str | bytes
) -> Tensor:
    """Return the model's probabilities (V,) for the symbol that follows ``prompt``."""
    logits, _ = warm_up(model, vocabulary, prompt)
    return torch.softmax(logits, dim=-1)


@torch.no_grad()
def generate(
    model: CharLanguageModel,
    vocabulary: Vocabulary,
    prompt: str | bytes,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """Return ``length`` symbols sampled after ``prompt``, decoded (prompt excluded).

    The same seed gives the same text for the same model and prompt.
    """
    if length < 0:
        raise ValueError(f"expected a length of at least 0, got {length}")
    check_sampling(temperature, top_k, len(vocabulary))
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    logits, state = warm_up(model, vocabulary, prompt)
    sampled: list[int] = []
    for _ in range(length):
        probabilities = sampling_distribution(logits, temperature, top_k)
        symbol = torch.multinomial(probabilities, 1, generator=generator)
        sampled.append(int(symbol))
        output, state = model(symbol.view(1, 1), state)
        logits = output[0, 0]
    return vocabulary.decode(sampled)
