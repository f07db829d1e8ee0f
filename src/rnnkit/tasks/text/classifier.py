"""Train, evaluate and apply a sequence classifier.

Sequences of different lengths are padded into one batch and the recurrent
layer gets each row's length through ``lengths=``, so padding never reaches the
state that is read out. The rows are shuffled once with the seed and split into
test, validation and training parts. The validation loss drives early stopping,
and the test part is scored only at the end, against the majority-class
baseline.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import kernels
from rnnkit.tasks.text import checkpoint
from rnnkit.tasks.text.model import ClassifierConfig, SequenceClassifier
from rnnkit.tasks.text.sequences import NUMBERS, TEXT, SequenceData


@dataclass
class ClassifierSettings:
    """Optimisation settings of the classifier.

    ``epochs`` is the maximum number of epochs. Training stops earlier when the
    validation loss has not improved for ``patience`` epochs in a row.
    """

    batch_size: int = 32
    epochs: int = 30
    learning_rate: float = 5e-3
    max_grad_norm: float = 1.0
    patience: int = 5
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    seed: int = 0

    def check(self) -> None:
        """Raise ``ValueError`` for a setting outside its range."""
        for name in ("batch_size", "epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"expected {name} of at least 1, got {getattr(self, name)}"
                )
        if not self.learning_rate > 0:
            raise ValueError(
                f"expected a positive learning rate, got {self.learning_rate}"
            )
        if not self.max_grad_norm > 0:
            raise ValueError(
                f"expected a positive gradient-norm limit, got {self.max_grad_norm}"
            )
        for name in ("test_fraction", "validation_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(
                    f"expected {name} in (0, 1), got {getattr(self, name)}"
                )
        if self.test_fraction + self.validation_fraction >= 1:
            raise ValueError(
                "expected test_fraction + validation_fraction below 1, so that rows "
                f"remain for training, got {self.test_fraction} + "
                f"{self.validation_fraction}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class SequenceEncoder:
    """Turns sequences into padded model input, fitted on the training rows only.

    Text maps each character to an id; id 0 stands for any character not seen
    in training, so new text still encodes. Numbers are standardised per
    feature with the training mean and standard deviation.
    """

    def __init__(
        self,
        kind: str,
        symbols: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        self.kind = kind
        self.symbols = symbols or []
        self.index = {symbol: i + 1 for i, symbol in enumerate(self.symbols)}
        self.mean = torch.tensor(mean or [], dtype=torch.float32)
        self.std = torch.tensor(std or [], dtype=torch.float32)

    @classmethod
    def fit(cls, data: SequenceData, rows: list[int]) -> SequenceEncoder:
        """Fit the encoder on the sequences at positions ``rows`` of ``data``."""
        if data.kind == TEXT:
            symbols = sorted({char for i in rows for char in data.sequences[i]})
            return cls(TEXT, symbols=symbols)
        steps = np.concatenate([data.sequences[i] for i in rows])
        std = steps.std(axis=0)
        # A constant feature carries no information; dividing by 1 keeps it finite.
        std[std == 0] = 1.0
        return cls(NUMBERS, mean=steps.mean(axis=0).tolist(), std=std.tolist())

    @property
    def input_size(self) -> int:
        return int(self.mean.numel()) if self.kind == NUMBERS else 1

    @property
    def vocab_size(self) -> int:
        """Ids in use, the unknown-character id 0 included; 0 for numbers."""
        return len(self.symbols) + 1 if self.kind == TEXT else 0

    def batch(self, sequences: list) -> tuple[Tensor, Tensor]:
        """Return padded inputs, ids (B, T) or numbers (B, T, F), and lengths (B,)."""
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
        steps = int(lengths.max())
        if self.kind == TEXT:
            inputs = torch.zeros(len(sequences), steps, dtype=torch.int64)
            for b, text in enumerate(sequences):
                ids = [self.index.get(char, 0) for char in text]
                inputs[b, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            return inputs, lengths
        features = self.input_size
        inputs = torch.zeros(len(sequences), steps, features)
        for b, array in enumerate(sequences):
            if array.shape[1] != features:
                raise ValueError(
                    f"expected {features} numbers per step, as in training, got "
                    f"{array.shape[1]}"
                )
            inputs[b, : len(array)] = (torch.from_numpy(array) - self.mean) / self.std
        return inputs, lengths

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "symbols": list(self.symbols),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> SequenceEncoder:
        return cls(data["kind"], data["symbols"], data["mean"], data["std"])


@dataclass
class Evaluation:
    """Scores of a classifier on labelled rows.

    ``confusion[i][j]`` counts rows of true class i predicted as class j, in
    the order of ``classes``. The majority baseline always predicts the most
    frequent class of the training part.
    """

    count: int
    accuracy: float
    majority_class: str
    majority_accuracy: float
    classes: list[str]
    confusion: list[list[int]]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpochProgress:
    """Progress report passed to the callback after each epoch."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    best_val_loss: float
    seconds: float


@dataclass
class ClassifierResult:
    """Outcome of training, and the scores on the held-out test part."""

    epochs: int
    best_epoch: int
    best_val_loss: float
    stop_reason: str
    seconds: float
    split: dict[str, int]
    test: Evaluation | None = None
    history: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["test"] = self.test.to_dict() if self.test is not None else {}
        return data


def split_rows(count: int, settings: ClassifierSettings) -> dict[str, list[int]]:
    """Shuffle row positions with the seed and split them into test, validation, train.

    Raises ``ValueError`` when a part would be empty.
    """
    test_size = max(1, round(count * settings.test_fraction))
    val_size = max(1, round(count * settings.validation_fraction))
    if count - test_size - val_size < 1:
        raise ValueError(
            f"{count} sequences are too few to split into training, validation "
            "and test parts; expected at least 3"
        )
    order = np.random.default_rng(settings.seed).permutation(count).tolist()
    return {
        "test": order[:test_size],
        "validation": order[test_size : test_size + val_size],
        "train": order[test_size + val_size :],
    }


def check_labels(data: SequenceData) -> list[str]:
    """Return the sorted classes of labelled data.

    Raises ``ValueError`` for data without labels or with fewer than 2 classes.
    """
    if data.labels is None:
        raise ValueError("expected labelled sequences to train on, got no labels")
    classes = sorted(set(data.labels))
    if len(classes) < 2:
        raise ValueError(
            f"expected at least 2 classes to tell apart, got only {classes[0]!r}"
        )
    return classes


def train_classifier(
    data: SequenceData,
    config: ClassifierConfig | None = None,
    settings: ClassifierSettings | None = None,
    progress: Callable[[EpochProgress], None] | None = None,
    checkpoint_path: str | Path | None = None,
) -> tuple[SequenceClassifier, SequenceEncoder, ClassifierResult]:
    """Train a classifier on labelled sequences and score it on a held-out part.

    The class count and input form of ``config`` are set from the data. The
    model returned has the weights of the best validation loss; with
    ``checkpoint_path``, they are written there at the end. Seeds torch's
    global random number generator with ``settings.seed``.
    """
    settings = settings or ClassifierSettings()
    settings.check()
    classes = check_labels(data)
    parts = split_rows(len(data.sequences), settings)
    encoder = SequenceEncoder.fit(data, parts["train"])
    targets = torch.tensor([classes.index(label) for label in data.labels])

    config = copy.copy(config) if config is not None else ClassifierConfig(0)
    config.num_classes = len(classes)
    config.vocab_size = encoder.vocab_size
    config.input_size = encoder.input_size
    torch.manual_seed(settings.seed)
    model = SequenceClassifier(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)

    def batches(rows: list[int]):
        for start in range(0, len(rows), settings.batch_size):
            chunk = rows[start : start + settings.batch_size]
            inputs, lengths = encoder.batch([data.sequences[i] for i in chunk])
            yield inputs, lengths, targets[chunk]

    result = fit_classifier(model, optimizer, parts, batches, settings, progress)
    result.split = {name: len(rows) for name, rows in parts.items()}

    predicted, _ = predict(model, encoder, [data.sequences[i] for i in parts["test"]])
    majority = Counter(data.labels[i] for i in parts["train"]).most_common(1)[0][0]
    result.test = score(
        [data.labels[i] for i in parts["test"]],
        [classes[i] for i in predicted],
        classes,
        majority,
    )
    if checkpoint_path is not None:
        payload = checkpoint.base_payload(checkpoint.CLASSIFIER_FORMAT, model)
        payload["classes"] = classes
        payload["encoder"] = encoder.to_dict()
        payload["settings"] = settings.to_dict()
        payload["result"] = result.to_dict()
        payload["data"] = {"source": data.source, "columns": data.columns}
        checkpoint.save_checkpoint(payload, checkpoint_path)
    return model, encoder, result


def fit_classifier(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    parts: dict[str, list[int]],
    batches: Callable,
    settings: ClassifierSettings,
    progress: Callable[[EpochProgress], None] | None = None,
) -> ClassifierResult:
    """Run the training loop and leave the best validation weights in ``model``.

    ``batches(rows)`` yields (inputs, lengths, targets) for the row positions
    given, in that order; the training rows are reshuffled every epoch.
    """
    rng = np.random.default_rng(settings.seed)
    kernels.prepare()  # a first-use compile does not count as training time
    start = time.perf_counter()
    result = ClassifierResult(0, 0, math.inf, "epochs", 0.0, {})
    best_weights = copy.deepcopy(model.state_dict())
    epochs_without_improvement = 0

    for epoch in range(1, settings.epochs + 1):
        model.train()
        losses = []
        for inputs, lengths, targets in batches(
            rng.permutation(parts["train"]).tolist()
        ):
            loss = F.cross_entropy(model(inputs, lengths), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            losses.append(loss.item())

        val_loss, val_accuracy = _validate(model, batches(parts["validation"]))
        train_loss = float(np.mean(losses))
        result.history.append([epoch, train_loss, val_loss, val_accuracy])
        result.epochs = epoch
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_weights = copy.deepcopy(model.state_dict())
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
        if progress is not None:
            progress(
                EpochProgress(
                    epoch=epoch,
                    epochs=settings.epochs,
                    train_loss=train_loss,
                    val_loss=val_loss,
                    val_accuracy=val_accuracy,
                    best_val_loss=result.best_val_loss,
                    seconds=time.perf_counter() - start,
                )
            )
        if epochs_without_improvement >= settings.patience:
            result.stop_reason = "early stopping"
            break

    model.load_state_dict(best_weights)
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def _validate(model: nn.Module, batches) -> tuple[float, float]:
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for inputs, lengths, targets in batches:
        logits = model(inputs, lengths)
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += len(targets)
    return total_loss / count, correct / count


@torch.no_grad()
def predict(
    model: SequenceClassifier,
    encoder: SequenceEncoder,
    sequences: list,
    batch_size: int = 256,
) -> tuple[list[int], list[float]]:
    """Return the predicted class index of each sequence and its probability."""
    model.eval()
    indices: list[int] = []
    probabilities: list[float] = []
    for start in range(0, len(sequences), batch_size):
        inputs, lengths = encoder.batch(sequences[start : start + batch_size])
        best = torch.softmax(model(inputs, lengths), dim=-1).max(dim=-1)
        indices.extend(best.indices.tolist())
        probabilities.extend(best.values.tolist())
    return indices, probabilities


def score(
    labels: list[str], predicted: list[str], classes: list[str], majority: str
) -> Evaluation:
    """Score predicted labels against true ones; see ``Evaluation``.

    A true label outside ``classes`` counts as a miss and gets its own row and
    column in the confusion matrix, after the known classes.
    """
    extra = sorted(set(labels) - set(classes))
    order = classes + extra
    position = {label: i for i, label in enumerate(order)}
    confusion = np.zeros((len(order), len(order)), dtype=np.int64)
    for true, guess in zip(labels, predicted, strict=True):
        confusion[position[true], position[guess]] += 1
    count = len(labels)
    correct = sum(true == guess for true, guess in zip(labels, predicted, strict=True))
    return Evaluation(
        count=count,
        accuracy=correct / count,
        majority_class=majority,
        majority_accuracy=sum(label == majority for label in labels) / count,
        classes=order,
        confusion=confusion.tolist(),
    )


def load_classifier(
    path: str | Path,
) -> tuple[SequenceClassifier, SequenceEncoder, list[str], dict]:
    """Rebuild a classifier from a checkpoint; return it (in eval mode), its
    encoder, its classes and the whole checkpoint dict."""
    payload = checkpoint.load_checkpoint(path, checkpoint.CLASSIFIER_FORMAT)
    model = SequenceClassifier(ClassifierConfig(**payload["model"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return (
        model,
        SequenceEncoder.from_dict(payload["encoder"]),
        payload["classes"],
        payload,
    )
