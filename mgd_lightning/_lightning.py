"""The Lightning namespace the package uses: ``pytorch_lightning`` or ``lightning.pytorch``.

Lightning ships under two names with distinct classes: ``pytorch_lightning`` (the ``pytorch-lightning``
package) and ``lightning.pytorch`` (the ``lightning`` package, ``import lightning as L``). A module built on one
is not a ``LightningModule`` for the other's Trainer, so the whole package imports Lightning from here:

* only one installed: that one;
* both installed: ``pytorch_lightning`` by default, ``lightning.pytorch`` with ``MGD_LIGHTNING_BACKEND=lightning``
  (``MGD_LIGHTNING_BACKEND=pytorch_lightning`` selects the default explicitly); without the variable, the one
  the program imported already, when it imported only one of them (``import lightning as L`` first: the modules
  are ``lightning.pytorch`` ones, and ``L.Trainer().fit(module)`` accepts them).

The variable is read once, on the first import of the package's Lightning layer. A module built while the other
namespace is imported (it was imported after this package chose) warns, naming the variable
(:func:`warn_if_mixed_namespaces`): the other namespace's Trainer would refuse it with Lightning's "model must be
a LightningModule". ``import mgd_lightning`` and the math core import nothing from here (tests/test_layering.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import warnings
from types import ModuleType
from typing import Any

__all__ = [
    "BACKEND", "ENV_VAR", "NAMESPACE", "LightningBackendError", "PossibleUserWarning", "callbacks",
    "isolate_rng", "loggers", "map_class_path", "pl", "rank_zero_warn", "seed_everything", "strategies",
    "utilities", "warn_if_mixed_namespaces",
]

#: the environment variable that selects the backend where both are installed
ENV_VAR = "MGD_LIGHTNING_BACKEND"
#: backend name -> (import namespace, pip package)
_BACKENDS = {"pytorch_lightning": ("pytorch_lightning", "pytorch-lightning"),
             "lightning": ("lightning.pytorch", "lightning")}
_ALIASES = {"pytorch_lightning": "pytorch_lightning", "pytorch-lightning": "pytorch_lightning",
            "lightning": "lightning", "lightning.pytorch": "lightning"}


class LightningBackendError(ImportError):
    """No usable Lightning for the package: none installed, or a bad ``MGD_LIGHTNING_BACKEND``."""


def _installed(backend: str) -> bool:
    top = _BACKENDS[backend][0].split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def select_backend(value: str | None = None) -> str:
    """``"pytorch_lightning"`` or ``"lightning"``: the backend for ``value`` (default: ``$MGD_LIGHTNING_BACKEND``)."""
    raw = os.environ.get(ENV_VAR, "") if value is None else value
    wanted = raw.strip()
    if wanted:
        backend = _ALIASES.get(wanted)
        if backend is None:
            raise LightningBackendError(
                f"{ENV_VAR}={raw!r} is not a Lightning backend: set it to 'pytorch_lightning' (import "
                "pytorch_lightning) or 'lightning' (import lightning.pytorch), or unset it to use the installed one."
            )
        if not _installed(backend):
            namespace, package = _BACKENDS[backend]
            other = "lightning" if backend == "pytorch_lightning" else "pytorch_lightning"
            hint = f", or set {ENV_VAR}={other} (installed)" if _installed(other) else ""
            raise LightningBackendError(
                f"{ENV_VAR}={raw!r} selects {namespace}, which is not installed: `pip install {package}`, "
                f"unset {ENV_VAR}{hint}."
            )
        return backend
    installed = [backend for backend in ("pytorch_lightning", "lightning") if _installed(backend)]
    if len(installed) == 2:  # the one the program already uses, if it imported only one
        imported = [backend for backend in installed if _BACKENDS[backend][0] in sys.modules]
        if len(imported) == 1:
            return imported[0]
    if installed:
        return installed[0]
    raise LightningBackendError(
        "mgd-lightning needs Lightning: `pip install pytorch-lightning` (import pytorch_lightning) or "
        f"`pip install lightning` (import lightning.pytorch; with both installed, set {ENV_VAR}=lightning)."
    )


#: the selected backend: ``"pytorch_lightning"`` or ``"lightning"``
BACKEND = select_backend()
#: its import namespace: ``"pytorch_lightning"`` or ``"lightning.pytorch"``
NAMESPACE = _BACKENDS[BACKEND][0]
_OTHER_NAMESPACE = "lightning.pytorch" if NAMESPACE == "pytorch_lightning" else "pytorch_lightning"


def _import(name: str = "") -> ModuleType:
    return importlib.import_module(f"{NAMESPACE}.{name}" if name else NAMESPACE)


# ``cli`` (LightningCLI, needs jsonargparse) is imported on first use: ``from mgd_lightning._lightning import cli``
#: the Lightning namespace itself (``pl.Trainer``, ``pl.LightningModule``, ...)
pl = _import()
callbacks = _import("callbacks")
loggers = _import("loggers")
strategies = _import("strategies")
utilities = _import("utilities")
rank_zero_warn = utilities.rank_zero_warn
isolate_rng = _import("utilities.seed").isolate_rng  # lightning_fabric's / lightning.fabric's
seed_everything = pl.seed_everything
PossibleUserWarning = _import("utilities.warnings").PossibleUserWarning


_warned_mixed = False


def warn_if_mixed_namespaces(what: str = "this module") -> bool:
    """Warn (once) when the other Lightning namespace is imported too and ``MGD_LIGHTNING_BACKEND`` did not choose:
    its Trainer refuses the package's modules ("model must be a LightningModule"); the warning names the variable
    that fixes it. Returns whether it warned."""
    global _warned_mixed
    if _warned_mixed or os.environ.get(ENV_VAR, "").strip() or _OTHER_NAMESPACE not in sys.modules:
        return False
    _warned_mixed = True
    other = "lightning" if BACKEND == "pytorch_lightning" else "pytorch_lightning"
    warnings.warn(
        f"{what} is a {NAMESPACE}.LightningModule, but {_OTHER_NAMESPACE} is imported too (after mgd_lightning "
        f"chose {NAMESPACE}; {ENV_VAR} is unset): a {_OTHER_NAMESPACE} Trainer refuses it with \"model must be a "
        f"LightningModule\". Set {ENV_VAR}={other} before the first import of mgd_lightning (or import "
        f"{_OTHER_NAMESPACE} before it), or train with {NAMESPACE}.Trainer.",
        UserWarning, stacklevel=3,
    )
    return True


def __getattr__(name: str) -> Any:
    # ``cli`` needs jsonargparse: imported on first use only
    if name == "cli":
        return _import("cli")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_FOREIGN_PATH = re.compile(rf"{re.escape(_OTHER_NAMESPACE)}(\.[A-Za-z_][A-Za-z0-9_]*)+")


def map_class_path(value: Any) -> Any:
    """``value`` with each dotted path in the other Lightning namespace rewritten to the selected one
    (``pytorch_lightning.callbacks.ModelCheckpoint`` <-> ``lightning.pytorch.callbacks.ModelCheckpoint``),
    recursively through dicts and lists: the ``class_path`` values of the configs work under either backend."""
    if isinstance(value, str):
        if _FOREIGN_PATH.fullmatch(value):
            return NAMESPACE + value[len(_OTHER_NAMESPACE):]
        return value
    if isinstance(value, dict):
        return {key: map_class_path(item) for key, item in value.items()}
    if isinstance(value, list):
        return [map_class_path(item) for item in value]
    return value
