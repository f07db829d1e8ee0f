"""Save and restore everything a training loop needs to continue after a crash.

A training state is a dict of plain data that ``torch.load(path,
weights_only=True)`` reads:

    model       the weights (state dict)
    optimizer   the optimizer's state dict (Adam's moments and step counts)
    scheduler   the learning-rate scheduler's state dict
    rng         the torch (CPU and, when initialised, CUDA), NumPy and Python
                generators, and any named ``torch.Generator`` of the loop
    loop        the data position and early-stopping state (``LoopState``)

A run state (``RunCheckpoint``) holds the training states of the models of one
run, which trains them one after another: the finished ones with their best
weights and outcome, and the one in progress.

Resuming continues the exact computation: a run that is killed and resumed
ends with the same weights as one that was never interrupted, as long as both
use the same settings, the same number of processes and threads, and the same
PyTorch build (floating-point sums depend on all three).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnkit.distributed import atomic_save, is_main_process

RUN_STATE_FORMAT = "rnnkit-run-state"
RUN_STATE_VERSION = 1


@dataclass
class LoopState:
    """Position of a training loop in its data, and its early-stopping record.

    ``epoch`` counts finished epochs, so the loop continues at ``epoch + 1``
    with the shuffle generator as saved. ``step`` counts optimizer steps over
    all epochs. The patience counter is ``epoch - best_epoch``.
    """

    epoch: int = 0
    step: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[tuple[float, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": [list(pair) for pair in self.history],
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, values: dict) -> LoopState:
        return cls(
            epoch=values["epoch"],
            step=values["step"],
            best_loss=values["best_loss"],
            best_epoch=values["best_epoch"],
            best_state=values["best_state"],
            history=[tuple(pair) for pair in values["history"]],
            seconds=values["seconds"],
        )


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Return the state of every random generator a training loop may draw from."""
    python_version, python_internal, python_gauss = random.getstate()
    numpy_name, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = (
        np.random.get_state()
    )
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": numpy_name,
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "position": int(numpy_position),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "python": {
            "version": python_version,
            "internal": list(python_internal),
            "gauss_next": python_gauss,
        },
        "generators": {
            name: generator.get_state()
            for name, generator in (generators or {}).items()
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(
    state: dict, generators: dict[str, torch.Generator] | None = None
) -> None:
    """Set every generator back to ``state`` from ``capture_rng``.

    Raises ValueError when ``generators`` names a generator that ``state``
    does not hold.
    """
    generators = generators or {}
    missing = sorted(set(generators) - set(state["generators"]))
    if missing:
        raise ValueError(
            f"the saved random state has no generator named {', '.join(missing)}; "
            f"it has {', '.join(sorted(state['generators'])) or 'none'}"
        )

    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["bit_generator"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate(
        (python["version"], tuple(python["internal"]), python["gauss_next"])
    )
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    generators: dict[str, torch.Generator],
    loop: LoopState | None,
    extra: dict | None = None,
) -> dict:
    """Return the training state of a loop at the end of a step or an epoch.

    ``extra`` holds plain data of a loop whose position ``LoopState`` does not
    describe; ``restore_training`` leaves it in the state for that loop to read.
    Tensors are cloned, so that later steps do not change the saved state.
    """
    return _clone(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": capture_rng(generators),
            "loop": None if loop is None else loop.to_dict(),
            "extra": extra,
        }
    )


def restore_training(
    state: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    generators: dict[str, torch.Generator],
) -> LoopState | None:
    """Load a state from ``capture_training`` into the loop's objects in place;
    return the loop's position and early-stopping record, if it was saved."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if state["scheduler"] is None:
            raise ValueError(
                "the saved training state has no learning-rate scheduler state, "
                "but this loop uses a scheduler"
            )
        scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], generators)
    return None if state["loop"] is None else LoopState.from_dict(state["loop"])


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clone(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_clone(item) for item in value)
    return value


def load_run_state(path: str | Path) -> dict:
    """Read a run state written by ``RunCheckpoint``.

    Raises ValueError when ``path`` is missing, unreadable, or not an rnnkit
    run state of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"resume checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # The weights-only unpickler raises many kinds of error on bytes that
        # torch.save did not write; all of them mean the same to the caller.
        raise ValueError(
            f"{path} is not a resume checkpoint: torch.load could not read it"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != RUN_STATE_FORMAT:
        raise ValueError(
            f"{path} is not a resume checkpoint: it has no "
            f"format={RUN_STATE_FORMAT!r} entry (a final model checkpoint cannot "
            "be resumed; pass the resume.pt that training writes every epoch)"
        )
    version = payload.get("format_version")
    if version != RUN_STATE_VERSION:
        raise ValueError(
            f"{path} has resume format version {version}, but this rnnkit reads "
            f"version {RUN_STATE_VERSION}"
        )
    return payload


class RunCheckpoint:
    """The resumable state of a run that trains one or more named models.

    ``save_training`` records the model in progress after each epoch and
    ``save_finished`` records a model once its training ends. Each call
    rewrites ``path`` atomically on rank 0; with ``path`` None nothing is
    written.
    """

    def __init__(
        self,
        path: str | Path | None,
        settings: dict,
        resumed: dict | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.settings = dict(settings)
        self.finished: dict[str, dict] = {}
        self.current: dict | None = None
        if resumed is not None:
            self.finished = dict(resumed["finished"])
            self.current = resumed["current"]

    @classmethod
    def resume(
        cls, resume_path: str | Path, path: str | Path | None, settings: dict
    ) -> RunCheckpoint:
        """Load the run state at ``resume_path`` and check it was written with
        ``settings``; later saves go to ``path``.

        Raises ValueError when the saved settings differ from ``settings``,
        naming each difference.
        """
        payload = load_run_state(resume_path)
        check_same_settings(payload["settings"], settings, resume_path)
        return cls(path, settings, payload)

    def finished_model(self, name: str) -> dict | None:
        """Return ``{"state_dict", "outcome"}`` of a finished model, or None."""
        return self.finished.get(name)

    def training_state(self, name: str) -> dict | None:
        """Return the saved training state of ``name`` if it was in progress."""
        if self.current is not None and self.current["name"] == name:
            return self.current["training"]
        return None

    def save_training(self, name: str, training: dict) -> None:
        self.current = {"name": name, "training": training}
        self._write()

    def save_finished(
        self, name: str, state_dict: dict[str, torch.Tensor], outcome: dict
    ) -> None:
        self.finished[name] = {"state_dict": _clone(state_dict), "outcome": outcome}
        self.current = None
        self._write()

    def _write(self) -> None:
        if self.path is None or not is_main_process():
            return
        import rnnkit

        atomic_save(
            {
                "format": RUN_STATE_FORMAT,
                "format_version": RUN_STATE_VERSION,
                "rnnkit_version": rnnkit.__version__,
                "settings": self.settings,
                "finished": self.finished,
                "current": self.current,
            },
            self.path,
        )


def check_same_settings(saved: dict, current: dict, path: str | Path) -> None:
    """Raise ValueError naming every setting whose value differs from the saved one."""
    names = sorted(set(saved) | set(current))
    differences = [
        f"{name}={saved.get(name)!r} (now {current.get(name)!r})"
        for name in names
        if saved.get(name) != current.get(name)
    ]
    if differences:
        raise ValueError(
            f"cannot resume from {path}: it was written with other settings: "
            f"{'; '.join(differences)}; rerun with the options of the original run"
        )
