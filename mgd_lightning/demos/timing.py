"""What both demos do with each network: train it, time the training, validate it once."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["timed_fit"]


def timed_fit(trainer: Any, module: Any, datamodule: Any) -> tuple[dict[str, float], float]:
    """``trainer.fit(module, datamodule=datamodule)``, then one validation: ``(its metrics, training wall seconds)``."""
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    wall = time.perf_counter() - start
    return trainer.validate(module, datamodule=datamodule, verbose=False)[0], wall
