"""Test-session settings."""

from __future__ import annotations

import os

import torch

# Under pytest-xdist each worker gets one torch thread: two workers with two threads each on a 2-core
# machine oversubscribe the cores and made CPU tests several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
