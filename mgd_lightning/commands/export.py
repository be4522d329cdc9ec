"""``mgd-lightning export``: the trained network of a checkpoint as a file of its own::

    mgd-lightning export --ckpt_path runs/digits/mgd_amp/checkpoints/best.ckpt --output student.pt
    mgd-lightning export --ckpt_path best.ckpt --config configs/digits/mgd_amp.yaml --format torchscript \\
        --output student.ts

Formats:

* ``state_dict`` (default): the student's plain ``state_dict`` (the keys under ``model.`` of a DistillationModule or
  ClassificationModule checkpoint), which the bare network loads:
  ``build_model(name, num_classes=...).load_state_dict(torch.load("student.pt"))``. With ``--config`` the
  network is built and the weights loaded into it first (a check that they fit).
* ``torchscript``: ``torch.jit.trace`` of the network in eval mode, saved, loaded back and compared with the
  PyTorch network on a random input (``allclose``; the maximum absolute difference is printed).
* ``onnx``: ``torch.onnx.export`` (PyTorch's ``torch.export``-based exporter, batch size dynamic), one
  self-contained file (the weights inside it, no ``.data`` file beside it); needs the ``onnx`` and ``onnxscript``
  packages (``pip install "mgd-lightning[onnx]"``); compared like TorchScript when ``onnxruntime`` is installed
  (the extra has it).

Detectors (``task: detection`` configs) are exported as ``state_dict`` only; ``torchscript`` and ``onnx`` are
refused (their outputs are lists of box dicts).

``torchscript`` and ``onnx`` build the network, so they need ``--config``: the config the run was trained with (or
the ``config.yaml`` LightningCLI wrote into its ``lightning_logs/version_N/``). The network is built from its
``student`` (DistillationModule) or ``model`` (ClassificationModule) entry, the checkpoint's weights replacing the
pre-trained ones, never downloaded: ``build_model``'s without its ``weights`` / ``checkpoint`` (nothing read);
``build_detector``'s without its ``checkpoint``, with ``download=False`` (its ``weights`` / ``weights_backbone`` shape
the network: a pre-trained backbone has frozen BatchNorm; their files are read from the torch hub cache as the run
read them; a missing one is a one-line error). The example input is ``(2, *input_size)``, with ``--input_size``,
else the config's ``input_size``, else the network's ``default_input_size``, else 3 x 224 x 224 (the network is run
on it first: a size it cannot take is a one-line error).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from mgd_lightning.checkpoints import CheckpointFileError, check_checkpoint_file

__all__ = ["ExportError", "FORMATS", "export", "main"]

FORMATS = ("state_dict", "torchscript", "onnx")
#: tolerances of the exported network's check against the PyTorch network
RTOL, ATOL = 1e-4, 1e-5


class ExportError(ValueError):
    """An export that cannot be done as asked: the message says why and what to do."""


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _init_args(node: Any) -> dict:
    if not isinstance(node, dict):
        return {}
    if "init_args" in node:
        return dict(node["init_args"] or {})
    return {k: v for k, v in node.items() if k not in ("class_path", "dict_kwargs")}


def _load_config(paths: Sequence[str]) -> dict:
    config: dict = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"--config {path!r}: no such file")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ExportError(f"--config {path!r} is not a YAML mapping")
        config = _merge(config, loaded)
    # a config.yaml written by LightningCLI for a subcommand run has the same layout (model: at the top)
    return config


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ExportError(f"class_path {class_path!r} of the network in --config cannot be imported: {error}") from None


def network_from_config(config: dict) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The trained network of a run's config (``student`` of a DistillationModule, ``model`` of a
    ClassificationModule), built without pre-trained weights; and the config's ``input_size`` (or ``None``)."""
    module_args = _init_args(config.get("model"))
    key = "student" if "student" in module_args else "model" if "model" in module_args else None
    if key is None:
        raise ExportError(
            "--config has no model.init_args.student (DistillationModule) or model.init_args.model "
            "(ClassificationModule): pass the config the run was trained with"
        )
    node = module_args[key]
    if not isinstance(node, dict) or "class_path" not in node:
        raise ExportError(f"--config: model.init_args.{key} needs a class_path (e.g. mgd_lightning.models.build_model)")
    builder = _import(node["class_path"])
    args = _init_args(node)
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        parameters = {}
    from mgd_lightning.models import build_model

    # The checkpoint's weights replace the pre-trained ones: nothing is downloaded. build_model's network is the
    # same without them (cleared: nothing read either); a detector's is not (pre-trained backbones get frozen
    # BatchNorm, ...): its weight files are read from the hub cache as the run read them, never downloaded.
    cleared = ("weights", "checkpoint") if builder is build_model else ("checkpoint",)
    for name in cleared:
        if name in parameters:
            args[name] = None
    if "download" in parameters:
        args["download"] = False
    try:
        network = builder(**args)
    except FileNotFoundError as error:
        raise ExportError(
            f"building the network of --config as the run did needs a weight file that is not in the torch hub cache "
            f"({' '.join(str(error).split())}); export does not download it: the checkpoint's weights replace it, "
            "but the architecture depends on it (e.g. a pre-trained detector backbone's frozen BatchNorm). Put the "
            "file there (the run that trained read it), or export --format state_dict without --config"
        ) from None
    size = module_args.get("input_size")
    return network, (tuple(int(v) for v in size) if size is not None else None)


def _detector_refused(format: str, what: str) -> ExportError:
    return ExportError(
        f"--format {format}: detectors ({what}) are exported as --format state_dict only (their outputs are lists "
        "of box dicts, which this export does not trace); load the file with "
        "build_detector(...).load_state_dict(torch.load(FILE))"
    )


def _is_detector(network: nn.Module) -> bool:
    """A torchvision detector (RetinaNet, Faster / Mask R-CNN): its transform and backbone body."""
    return getattr(network, "transform", None) is not None and getattr(network, "backbone", None) is not None


def network_state(ckpt_path: str, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The network's tensors in a checkpoint: the keys under ``prefix`` of a Lightning checkpoint (the student of
    a DistillationModule, the network of a ClassificationModule), or a plain state_dict file as it is."""
    check_checkpoint_file(ckpt_path, what="--ckpt_path")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ExportError(f"--ckpt_path {ckpt_path!r} holds a {type(checkpoint).__name__}, not a checkpoint")
    if "state_dict" not in checkpoint:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint  # a plain state_dict already
        raise ExportError(f"--ckpt_path {ckpt_path!r} has no state_dict: not a Lightning checkpoint")
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        prefixes = sorted({k.split(".")[0] + "." for k in checkpoint["state_dict"]})
        raise ExportError(f"--ckpt_path {ckpt_path!r} has no keys under {prefix!r}; its prefixes are {prefixes}")
    return state


def _state_problems(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    """What keeps ``got`` from loading into a network whose state_dict is ``want`` ("" if nothing)."""
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [k for k in want if k in got and want[k].shape != got[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing in the checkpoint (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) the network does not have (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(got[k].shape)} in the checkpoint, "
                     f"{tuple(want[k].shape)} in the network)")
    return "; ".join(parts)


def _example_size(network: nn.Module, input_size: Sequence[int] | None, given: bool = False) -> tuple[int, ...]:
    """The (C, H, W) of the example input, checked by running the network on it (a one-line error naming where the
    size came from instead of a tracing error)."""
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
        source = "--input_size" if given else "the config's input_size"
    else:
        size = tuple(getattr(network, "default_input_size", None) or (3, 224, 224))
        source = "the network's default input size" if getattr(network, "default_input_size", None) else \
            "the default input size (no --input_size, no input_size in the config)"
    if len(size) != 3 or min(size) < 1:
        raise ExportError(f"{source} must be C H W (three sizes >= 1); got {size}")
    try:
        with torch.no_grad():
            network(_random_input(size, seed=0))
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"{source} {' '.join(map(str, size))}: the network cannot run a (2, {', '.join(map(str, size))}) input "
            f"({type(error).__name__}: {reason}); pass --input_size C H W of the images it was trained on (e.g. "
            "3 16 16 for configs/digits, 3 32 32 for CIFAR-100, 3 224 224 for CUB-200 / ImageNet)"
        ) from None
    return size


def _random_input(size: tuple[int, ...], seed: int) -> torch.Tensor:
    # an own generator: the process's random state is left alone
    return torch.randn(2, *size, generator=torch.Generator().manual_seed(seed))


def _compare(what: str, got: torch.Tensor, want: torch.Tensor, size: tuple[int, ...]) -> float:
    diff = float((got.float() - want.float()).abs().max())
    ok = torch.allclose(got.float(), want.float(), rtol=RTOL, atol=ATOL)
    shape = ", ".join(map(str, (2, *size)))
    verdict = "allclose" if ok else "NOT allclose"
    message = f"{what} check on a random ({shape}) input: max abs difference {diff:.3g} vs PyTorch ({verdict}, "
    print(f"{message}rtol={RTOL}, atol={ATOL})")  # noqa: T201 - the check's result
    if not ok:
        raise ExportError(f"the {what} network's outputs differ from PyTorch's (max abs difference {diff:.3g})")
    return diff


def _has_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def export(
    ckpt_path: str,
    output: str,
    config: Sequence[str] | str | None = None,
    format: str = "state_dict",
    input_size: Sequence[int] | None = None,
    prefix: str = "model.",
) -> Path:
    """Write the network of ``ckpt_path`` to ``output`` in ``format`` (see the module docstring); returns the path."""
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    configs = [config] if isinstance(config, str) else list(config or [])
    loaded = _load_config(configs) if configs else None
    if loaded is not None and format != "state_dict" and _init_args(loaded.get("model")).get("task") == "detection":
        raise _detector_refused(format, "task: detection")
    if format == "onnx":
        missing = [m for m in ("onnx", "onnxscript") if not _has_module(m)]
        if missing:
            raise ExportError(f"--format onnx needs the onnx and onnxscript packages (PyTorch's ONNX exporter); "
                              f"not installed: {', '.join(missing)}: pip install onnx onnxscript")
    out = Path(output)
    if out.is_dir() or str(output).endswith(("/", os.sep)):
        suffix = {"state_dict": ".pt", "torchscript": ".ts", "onnx": ".onnx"}[format]
        raise ExportError(f"--output {output!r} is a directory: give the file to write, e.g. "
                          f"{os.path.join(output, 'student' + suffix)}")
    state = network_state(ckpt_path, prefix)
    network = config_size = None
    if loaded is not None:
        network, config_size = network_from_config(loaded)
        problems = _state_problems(network.state_dict(), state)
        if problems:
            raise ExportError(
                f"the weights in --ckpt_path {ckpt_path!r} do not fit the network of --config "
                f"({type(network).__name__}): {problems}; pass the config the run was trained with"
            )
        network.load_state_dict(state)
        network.eval()
        if format != "state_dict" and _is_detector(network):
            raise _detector_refused(format, type(network).__name__)
    elif format != "state_dict":
        raise ExportError(f"--format {format} builds the network: pass --config (the config the run was trained "
                          "with, or the config.yaml in its lightning_logs/version_N/)")
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "state_dict":
        weights = network.state_dict() if network is not None else state
        torch.save({k: v.detach().clone().contiguous() for k, v in weights.items()}, out)
    elif format == "torchscript":
        size = _example_size(network, input_size or config_size, given=input_size is not None)
        with torch.no_grad():
            traced = torch.jit.trace(network, _random_input(size, seed=0))
            traced.save(str(out))
            x = _random_input(size, seed=1)
            try:
                _compare("TorchScript", torch.jit.load(str(out), map_location="cpu")(x), network(x), size)
            except ExportError:
                out.unlink(missing_ok=True)
                raise
    else:  # onnx: one self-contained file (weights inside, not in a .data file beside it), batch size dynamic
        size = _example_size(network, input_size or config_size, given=input_size is not None)
        with torch.no_grad():
            torch.onnx.export(
                network, (_random_input(size, seed=0),), str(out), input_names=["input"], output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False, verbose=False,
            )
        if _has_module("onnxruntime"):
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            x = _random_input(size, seed=1)
            got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
            with torch.no_grad():
                _compare("ONNX", got, network(x), size)
        else:
            import onnx

            onnx.checker.check_model(onnx.load(str(out)))
            print("ONNX model checked (onnx.checker); install onnxruntime to compare its outputs with PyTorch's")  # noqa: T201
    print(f"exported {format} to {out} ({out.stat().st_size} bytes)")  # noqa: T201 - the command's output
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgd-lightning export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint of a run (or a state_dict file)")
    parser.add_argument("--output", required=True, help="the file to write")
    parser.add_argument("--config", action="append", default=None,
                        help="the run's config (repeatable, merged in order); needed by torchscript and onnx")
    parser.add_argument("--format", choices=FORMATS, default="state_dict", help="default: state_dict")
    parser.add_argument("--input_size", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                        help="example input size (default: the config's input_size, else the network's)")
    parser.add_argument("--prefix", default="model.",
                        help="key prefix of the network in the checkpoint (default model.: the student)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        export(args.ckpt_path, args.output, config=args.config, format=args.format, input_size=args.input_size,
               prefix=args.prefix)
    except (FileNotFoundError, CheckpointFileError, ExportError) as error:
        raise SystemExit(f"mgd-lightning export: error: {error}") from None


if __name__ == "__main__":
    main()
