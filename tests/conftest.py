"""Fixtures shared by several test files."""

import time
from types import SimpleNamespace

import pytest

from rnnkit import kernels


@pytest.fixture
def slow_kernel_load(monkeypatch):
    """Make kernels.prepare sleep, as a first-use compile would.

    Returns the times of its calls (``calls``) and the length of its sleep
    in seconds (``seconds``).
    """
    load = SimpleNamespace(calls=[], seconds=1.0)

    def slow_prepare():
        load.calls.append(time.perf_counter())
        time.sleep(load.seconds)

    monkeypatch.setattr(kernels, "prepare", slow_prepare)
    return load
