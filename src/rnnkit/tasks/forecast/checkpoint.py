"""Save and load forecaster checkpoints.

A checkpoint is a dict that ``torch.load(path, weights_only=True)`` accepts:
only tensors, dicts, lists, strings, numbers, booleans and None. It contains

    format          "rnnkit-forecaster", to recognise the file
    format_version  CHECKPOINT_VERSION
    rnnkit_version  the rnnkit release that wrote it
    model           ModelConfig fields, to rebuild the network
    state_dict      the weights
    scaler          per-column mean and scale, fitted on the training part
    data            where the series came from and how it was read
    training        optimisation settings and early-stopping outcome
"""

from __future__ import annotations

from pathlib import Path

import torch

from rnnkit.files import save_atomically
from rnnkit.tasks.forecast.model import Forecaster, ModelConfig
from rnnkit.tasks.forecast.windows import Scaler

CHECKPOINT_FORMAT = "rnnkit-forecaster"
CHECKPOINT_VERSION = 1


def checkpoint_payload(
    model: Forecaster, scaler: Scaler, data: dict, training: dict
) -> dict:
    """Build the checkpoint dict of a trained model."""
    import rnnkit

    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "rnnkit_version": rnnkit.__version__,
        "model": model.config.to_dict(),
        "state_dict": {
            name: tensor.detach().clone() for name, tensor in model.state_dict().items()
        },
        "scaler": scaler.to_dict(),
        "data": data,
        "training": training,
    }


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (``rnnkit.files``)."""
    save_atomically(payload, path)


def load_checkpoint(path: str | Path) -> tuple[Forecaster, dict]:
    """Load a forecaster checkpoint; return the model in eval mode and the
    whole checkpoint dict as metadata.

    Raises ValueError when ``path`` is missing or is not an rnnkit forecaster
    checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # The weights-only unpickler raises whatever the bytes lead it to
        # (UnpicklingError, RuntimeError, KeyError, EOFError, ...) on a file
        # that torch.save did not write, so every failure here means the same.
        raise ValueError(
            f"{path} is not an rnnkit checkpoint: torch.load could not read it"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an rnnkit forecaster checkpoint: it has no "
            f"format={CHECKPOINT_FORMAT!r} entry"
        )
    version = payload.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version}, but this rnnkit "
            f"reads version {CHECKPOINT_VERSION}"
        )

    model = Forecaster(ModelConfig(**payload["model"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload
