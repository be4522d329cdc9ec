"""Test-session settings."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist each worker gets one torch thread: two workers with two threads each on a 2-core
# machine oversubscribe the cores and made CPU tests several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


#: Lightning warnings that the tests cause on purpose (tiny runs of a few batches, fits without a validation loader,
#: CLI runs given their arguments while sys.argv holds pytest's, resumes into the run's own checkpoint folder):
#: noise in every test run, said nothing about the code under test. The package's own warnings are not filtered.
EXPECTED_TEST_WARNINGS = (
    r"ignore:You defined a `validation_step` but have no `val_dataloader`",
    r"ignore:The number of training batches \(\d+\) is smaller than the logging interval",
    r"ignore:LightningCLI's args parameter is intended to run from within Python",
    r"ignore:Checkpoint directory .* exists and is not empty",
    r"ignore:The dirpath has changed from",
    r"ignore:Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
)


def pytest_configure(config) -> None:
    for line in EXPECTED_TEST_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


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
