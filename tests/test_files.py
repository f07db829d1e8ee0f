"""Atomic writes: the old file or the new one, with ordinary permissions."""

import os

import pytest
import torch

from rnnkit.files import save_atomically, write_atomically


def test_new_file_gets_umask_permissions(tmp_path):
    path = tmp_path / "model.pt"
    previous = os.umask(0o022)
    try:
        save_atomically({"weight": torch.ones(2)}, path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
    assert torch.equal(torch.load(path, weights_only=True)["weight"], torch.ones(2))


def test_failed_write_keeps_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_atomically(path, lambda file: file.write(b"old"))

    def fail(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
