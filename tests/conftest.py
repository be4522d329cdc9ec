"""Test-session settings."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist each worker gets one torch thread: two workers with two threads each on a 2-core
# machine oversubscribe the cores and made CPU tests several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _offline_weights(request, monkeypatch):
    """No test downloads torchvision weights from the internet: the tests that check the "not in the hub cache"
    messages must not fetch the real files on a machine with a network. tests/test_downloads.py serves its own
    files from 127.0.0.1 and sets the variable itself."""
    if request.module.__name__.rsplit(".", 1)[-1] != "test_downloads":
        monkeypatch.setenv("MGD_LIGHTNING_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of many tiny convolutions: OpenMP spin contention on a busy 2-core CPU made
    them up to 10x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
