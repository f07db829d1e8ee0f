"""Train a character or byte language model by truncated backpropagation through time.

The training text is laid out as B parallel streams (see ``streams``) and read
chunk by chunk: the state at the end of one chunk starts the next, detached so
that gradients flow back at most ``seq_len`` steps. An epoch is one pass over
the streams. The state starts from zeros at each epoch, because the end of a
stream does not join its start. The last part of the text is held out for
validation, which drives early stopping and the choice of the saved weights.

Losses are the mean cross-entropy per predicted symbol in nats; bits per
character (bpc) is that loss divided by ln 2.

In a ``torch.distributed`` process group each process trains a
DistributedDataParallel copy on its share of the B streams (see
``rnnkit.distributed``), and losses are added across processes. ``fit`` can
hand its whole state to a callback at each evaluation and continue from such
a state (see ``rnnkit.resume``).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import distributed, kernels
from rnnkit.resume import capture_training, restore_training
from rnnkit.tasks.text import checkpoint, streams
from rnnkit.tasks.text.model import (
    CharLanguageModel,
    LanguageModelConfig,
    detach_state,
)
from rnnkit.tasks.text.vocabulary import Vocabulary

LN2 = math.log(2.0)


@dataclass
class TrainSettings:
    """Optimisation settings of the language model.

    Training stops after ``max_steps`` optimiser steps when it is set, else
    after ``epochs`` passes over the training text, or earlier when the
    validation loss has not improved for ``patience`` evaluations in a row.
    ``eval_every`` is in optimiser steps; None evaluates once per epoch.
    The learning rate is multiplied by ``lr_factor`` after ``lr_patience``
    evaluations without a lower validation loss (``ReduceLROnPlateau``).
    """

    seq_len: int = 100
    batch_size: int = 32
    epochs: int = 10
    max_steps: int | None = None
    learning_rate: float = 2e-3
    max_grad_norm: float = 5.0
    patience: int = 5
    eval_every: int | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    lr_factor: float = 0.5
    lr_patience: int = 2

    def check(self) -> None:
        """Raise ``ValueError`` for a setting outside its range."""
        for name in ("seq_len", "batch_size", "epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"expected {name} of at least 1, got {getattr(self, name)}"
                )
        for name in ("max_steps", "eval_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"expected {name} of at least 1, got {value}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"expected a positive learning rate, got {self.learning_rate}"
            )
        if not self.max_grad_norm > 0:
            raise ValueError(
                f"expected a positive gradient-norm limit, got {self.max_grad_norm}"
            )
        if not 0 < self.lr_factor < 1:
            raise ValueError(
                f"expected a learning-rate factor in (0, 1), got {self.lr_factor}"
            )
        if self.lr_patience < 0:
            raise ValueError(
                f"expected lr_patience of at least 0, got {self.lr_patience}"
            )

    def to_dict(self) -> dict:
        # None has no place in a checkpoint's plain data, so 0 stands for unset.
        return {
            key: (0 if value is None else value) for key, value in asdict(self).items()
        }


@dataclass
class Progress:
    """Progress report passed to the callback after each optimiser step.

    ``train_loss`` is the mean loss of the steps since the previous report of
    an evaluation; ``val_loss`` is set only on steps that ran an evaluation.
    """

    step: int
    total_steps: int
    epoch: int
    train_loss: float
    val_loss: float | None
    best_val_loss: float
    seconds: float

    @property
    def train_bpc(self) -> float:
        return self.train_loss / LN2


ProgressCallback = Callable[[Progress], None]


@dataclass
class TrainResult:
    """Outcome of training. Losses are in nats per symbol."""

    steps: int
    best_step: int
    best_val_loss: float
    stop_reason: str
    seconds: float
    history: list[list[float]] = field(default_factory=list)

    @property
    def best_val_bpc(self) -> float:
        return self.best_val_loss / LN2

    def to_dict(self) -> dict:
        data = asdict(self)
        data["best_val_bpc"] = self.best_val_bpc
        return data


@dataclass
class PreparedText:
    """A corpus encoded and laid out for training."""

    vocabulary: Vocabulary
    train_streams: Tensor
    val_streams: Tensor
    default_prompt: str


def prepare_text(corpus: str | bytes, settings: TrainSettings) -> PreparedText:
    """Encode a corpus, split off validation and lay both parts out as streams.

    Raises ``ValueError`` when the text is too short for the sequence length
    and batch size.
    """
    settings.check()
    vocabulary = Vocabulary.from_corpus(corpus)
    ids = vocabulary.encode(corpus)
    train_ids, val_ids = streams.split_validation(ids, settings.validation_fraction)
    streams.check_stream_length(
        "training", train_ids, settings.batch_size, settings.seq_len
    )

    # Validation only needs enough streams to be read quickly; with fewer
    # symbols than the training batch needs, it uses fewer streams.
    val_batch = max(
        1, min(settings.batch_size, (val_ids.numel() - 1) // settings.seq_len)
    )

    text = corpus if isinstance(corpus, str) else corpus.decode("utf-8", "replace")
    default_prompt = "\n" if "\n" in text else text[0]
    return PreparedText(
        vocabulary=vocabulary,
        train_streams=streams.make_streams(train_ids, settings.batch_size),
        val_streams=streams.make_streams(val_ids, val_batch),
        default_prompt=default_prompt,
    )


def train_language_model(
    text: str | bytes | PreparedText,
    config: LanguageModelConfig | None = None,
    settings: TrainSettings | None = None,
    progress: ProgressCallback | None = None,
    checkpoint_path: str | Path | None = None,
    *,
    save_state: Callable[[dict], None] | None = None,
    resume_from: dict | None = None,
) -> tuple[CharLanguageModel, Vocabulary, TrainResult]:
    """Train a language model on a text and return it with its vocabulary and result.

    ``text`` is a corpus from ``read_corpus``, or that corpus already passed
    through ``prepare_text`` with the same settings (so a caller can check
    the data before it creates any file). ``config.vocab_size`` is set from
    the vocabulary. The model returned has the
    weights of the best validation loss. With ``checkpoint_path``, a checkpoint
    is written at every improvement and once more at the end, by rank 0
    alone. ``save_state`` and ``resume_from`` are passed to ``fit``. Seeds
    torch's global random number generator with ``settings.seed``.
    """
    config = copy.copy(config) if config is not None else LanguageModelConfig(0)
    settings = settings or TrainSettings()
    if isinstance(text, PreparedText):
        prepared = text
    else:
        prepared = prepare_text(text, settings)
    config.vocab_size = len(prepared.vocabulary)

    torch.manual_seed(settings.seed)
    model = CharLanguageModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=settings.lr_factor, patience=settings.lr_patience
    )

    def save(result: TrainResult) -> None:
        if checkpoint_path is not None and distributed.is_main_process():
            payload = language_model_payload(model, prepared, settings, result)
            checkpoint.save_checkpoint(payload, checkpoint_path)

    result = fit(
        model,
        optimizer,
        prepared,
        settings,
        progress,
        on_improvement=save,
        scheduler=scheduler,
        save_state=save_state,
        resume_from=resume_from,
    )
    save(result)
    return model, prepared.vocabulary, result


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    prepared: PreparedText,
    settings: TrainSettings,
    progress: ProgressCallback | None = None,
    on_improvement: Callable[[TrainResult], None] | None = None,
    *,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None,
    save_state: Callable[[dict], None] | None = None,
    resume_from: dict | None = None,
) -> TrainResult:
    """Run the training loop and leave the best validation weights in ``model``.

    ``on_improvement`` is called with the result so far each time the
    validation loss improves, while ``model`` has the improved weights.
    ``scheduler`` steps on each validation loss. ``save_state`` receives the
    whole training state after each evaluation (rank 0 only), and
    ``resume_from`` is such a state to continue from, even in mid-epoch.
    ``progress`` is called on rank 0 only.
    """
    # Each process reads its contiguous share of the B training streams.
    total_streams = prepared.train_streams.shape[1]
    world_size = distributed.get_world_size()
    if total_streams < world_size:
        raise ValueError(
            f"expected at least one training stream per process, got {total_streams} "
            f"streams for {world_size} processes; raise --batch or lower --devices"
        )
    shard = distributed.shard_range(total_streams)
    train_streams = prepared.train_streams[:, shard.start : shard.stop]
    val_shard = distributed.shard_range(prepared.val_streams.shape[1])
    val_streams = prepared.val_streams[:, val_shard.start : val_shard.stop]
    # DistributedDataParallel averages the gradients of the processes, so each
    # weighs its mean loss by its share of the streams times the world size.
    loss_scale = len(shard) * world_size / total_streams
    network = distributed.wrap_model(model)
    main_process = distributed.is_main_process()

    steps_per_epoch = streams.count_chunks(prepared.train_streams, settings.seq_len)
    total_steps = settings.max_steps or settings.epochs * steps_per_epoch
    eval_every = settings.eval_every or steps_per_epoch

    kernels.prepare()  # a first-use compile does not count as training time
    start = time.perf_counter()
    result = TrainResult(0, 0, math.inf, "", 0.0)
    best_weights = copy.deepcopy(model.state_dict())
    evaluations_without_improvement = 0
    loss_sum, loss_count = 0.0, 0
    step, epoch = 0, 0
    # A resumed run continues inside its epoch: it skips the chunks already
    # trained on and carries the state saved at that point.
    chunks_done, resumed_state = 0, None
    if resume_from is not None:
        restore_training(resume_from, model, optimizer, scheduler, {})
        saved = resume_from["extra"]
        result = TrainResult(**saved["result"])
        best_weights = saved["best_weights"]
        evaluations_without_improvement = saved["evaluations_without_improvement"]
        step, epoch = saved["step"], saved["epoch"] - 1
        chunks_done, resumed_state = saved["chunks_done"], saved["state"]
        start -= saved["seconds"]

    while not result.stop_reason:
        epoch += 1
        state, resumed_state = resumed_state, None
        chunks = streams.iterate_chunks(train_streams, settings.seq_len)
        chunks = itertools.islice(chunks, chunks_done, None)
        for chunk, (inputs, targets) in enumerate(chunks, start=chunks_done + 1):
            network.train()
            loss, state = train_step(
                network,
                optimizer,
                inputs,
                targets,
                state,
                settings.max_grad_norm,
                loss_scale,
            )
            if world_size > 1:
                (loss,) = distributed.all_reduce_sum([loss * len(shard)])
                loss /= total_streams
            step += 1
            loss_sum += loss
            loss_count += 1

            # Evaluate.
            val_loss = None
            if step % eval_every == 0 or step == total_steps:
                val_loss = evaluate(model, val_streams, settings.seq_len)
                if scheduler is not None:
                    scheduler.step(val_loss)
                result.history.append([step, loss_sum / loss_count, val_loss])
                if val_loss < result.best_val_loss:
                    result.best_val_loss, result.best_step = val_loss, step
                    best_weights = copy.deepcopy(model.state_dict())
                    evaluations_without_improvement = 0
                    result.steps, result.seconds = step, time.perf_counter() - start
                    if on_improvement is not None:
                        on_improvement(result)
                else:
                    evaluations_without_improvement += 1

            if progress is not None and main_process:
                progress(
                    Progress(
                        step=step,
                        total_steps=total_steps,
                        epoch=epoch,
                        train_loss=loss_sum / loss_count,
                        val_loss=val_loss,
                        best_val_loss=result.best_val_loss,
                        seconds=time.perf_counter() - start,
                    )
                )
            if val_loss is not None:
                loss_sum, loss_count = 0.0, 0

            if evaluations_without_improvement >= settings.patience:
                result.stop_reason = "early stopping"
            elif step >= total_steps:
                result.stop_reason = "max steps" if settings.max_steps else "epochs"
            if val_loss is not None and save_state is not None and main_process:
                saved = {
                    "result": asdict(result),
                    "best_weights": best_weights,
                    "evaluations_without_improvement": evaluations_without_improvement,
                    "step": step,
                    "epoch": epoch,
                    "chunks_done": chunk,
                    "state": state,
                    "seconds": time.perf_counter() - start,
                }
                save_state(
                    capture_training(model, optimizer, scheduler, {}, None, saved)
                )
            if result.stop_reason:
                break
        chunks_done = 0

    model.load_state_dict(best_weights)
    result.steps, result.seconds = step, time.perf_counter() - start
    return result


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    state,
    max_grad_norm: float,
    loss_scale: float = 1.0,
) -> tuple[float, object]:
    """Take one optimiser step on a chunk (T, B) and return its loss and end state.

    The state given is detached first, so the gradient stops at the chunk's start.
    The gradient is that of the loss times ``loss_scale``; the loss returned is
    not scaled.
    """
    logits, state = model(inputs, detach_state(state))
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    (loss * loss_scale).backward()
    nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item(), detach_state(state)


@torch.no_grad()
def evaluate(model: nn.Module, stream_ids: Tensor, seq_len: int) -> float:
    """Return the mean loss per symbol over streams (N, B), state carried throughout.

    In a process group each process passes its own streams, possibly none,
    and the mean is over the streams of all processes.
    """
    model.eval()
    total, count = 0.0, 0
    state = None
    if stream_ids.shape[1] > 0:
        for inputs, targets in streams.iterate_chunks(stream_ids, seq_len):
            logits, state = model(inputs, state)
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                reduction="sum",
            ).item()
            count += targets.numel()
    total, count = distributed.all_reduce_sum([total, count])
    return total / count


def language_model_payload(
    model: CharLanguageModel,
    prepared: PreparedText,
    settings: TrainSettings,
    result: TrainResult,
) -> dict:
    """Build the checkpoint dict of a language model (see ``checkpoint``)."""
    payload = checkpoint.base_payload(checkpoint.LANGUAGE_MODEL_FORMAT, model)
    payload["vocabulary"] = prepared.vocabulary.to_dict()
    payload["default_prompt"] = prepared.default_prompt
    payload["settings"] = settings.to_dict()
    payload["result"] = result.to_dict()
    return payload


def load_language_model(path: str | Path) -> tuple[CharLanguageModel, Vocabulary, dict]:
    """Rebuild a language model from a checkpoint; return it (in eval mode),
    its vocabulary and the whole checkpoint dict."""
    payload = checkpoint.load_checkpoint(path, checkpoint.LANGUAGE_MODEL_FORMAT)
    vocabulary = Vocabulary.from_dict(payload["vocabulary"])
    model = CharLanguageModel(LanguageModelConfig(**payload["model"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, vocabulary, payload
