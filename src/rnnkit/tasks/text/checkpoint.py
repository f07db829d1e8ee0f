"""Write and read the checkpoints of the text tasks.

A checkpoint is a dict of plain data that ``torch.load(path, weights_only=True)``
reads: tensors, dicts, lists, strings, ints, floats and booleans only. Its keys:

    format          LANGUAGE_MODEL_FORMAT or CLASSIFIER_FORMAT
    format_version  CHECKPOINT_VERSION
    rnnkit_version  the rnnkit release that wrote it
    model           the model config, to rebuild the network
    state_dict      the weights
    vocabulary      the symbols (language model; classifier of text)
    settings        the training settings
    result          what training reached (steps, losses, stop reason)

plus task-specific entries (a classifier's classes and feature scaling).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from rnnkit.files import write_atomically

LANGUAGE_MODEL_FORMAT = "rnnkit-char-language-model"
CLASSIFIER_FORMAT = "rnnkit-sequence-classifier"
CHECKPOINT_VERSION = 1


def base_payload(format_name: str, model: nn.Module) -> dict:
    """Return the entries every checkpoint has: format, versions, config, weights."""
    import rnnkit

    return {
        "format": format_name,
        "format_version": CHECKPOINT_VERSION,
        "rnnkit_version": rnnkit.__version__,
        "model": model.config.to_dict(),
        "state_dict": {
            name: tensor.detach().clone() for name, tensor in model.state_dict().items()
        },
    }


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically (see ``write_atomically``)."""
    write_atomically(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: str | Path, format_name: str) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` and check its format.

    Raises ``ValueError`` for a file that is not a checkpoint of ``format_name``
    or of a newer format version, and ``OSError`` for a file that cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        RuntimeError,
        EOFError,
    ) as error:
        raise ValueError(
            f"{path} is not a readable rnnkit checkpoint ({type(error).__name__})"
        ) from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != format_name:
        raise ValueError(
            f"{path} is not a checkpoint of the expected kind: expected format "
            f"{format_name!r}, got {found!r}"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version!r}, but this rnnkit "
            f"reads versions up to {CHECKPOINT_VERSION}; upgrade rnnkit"
        )
    return payload
