"""The process's random states (torch CPU and CUDA, numpy's global generator, Python's ``random``) as tensors only.

A checkpoint holding them loads with ``torch.load(weights_only=True)`` (no numpy objects, no pickled tuples), and
restoring them makes a resumed run draw the same data order and augmentation as the uninterrupted one.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

__all__ = ["get_rng_states", "set_rng_states"]


def get_rng_states() -> dict[str, torch.Tensor]:
    """Every global random state of this process, as a dict of tensors."""
    py_version, py_state, py_gauss = random.getstate()
    # numpy's global (legacy) generator is what np.random.* and augmentation libraries draw from
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # noqa: NPY002
    if np_name != "MT19937":  # numpy's legacy global generator is always MT19937
        raise RuntimeError(f"unexpected numpy global bit generator {np_name!r}")
    states = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": torch.tensor(py_version, dtype=torch.int64),
        "python_gauss": torch.tensor(math.nan if py_gauss is None else py_gauss, dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "numpy_pos": torch.tensor(int(np_pos), dtype=torch.int64),
        "numpy_has_gauss": torch.tensor(int(np_has_gauss), dtype=torch.int64),
        "numpy_gauss": torch.tensor(float(np_gauss), dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`get_rng_states` returned (keys it does not hold are left alone; the CUDA states only
    when this process sees as many devices as the one that saved them)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    if "python" in states:
        gauss = float(states["python_gauss"])
        random.setstate((int(states["python_version"]), tuple(int(v) for v in states["python"].tolist()),
                         None if math.isnan(gauss) else gauss))
    if "numpy" in states:
        keys = states["numpy"].numpy().astype(np.uint32)
        gauss_state = (int(states["numpy_has_gauss"]), float(states["numpy_gauss"]))
        state = ("MT19937", keys, int(states["numpy_pos"]), *gauss_state)
        np.random.set_state(state)  # noqa: NPY002 - the global generator, see get_rng_states
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(list(cuda.cpu()))
