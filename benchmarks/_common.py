"""Shared helpers of the performance benchmarks (matching_pass.py, train_step.py, multiprocess.py, memory.py).

Not a benchmark itself. The scripts are run as ``python benchmarks/<name>.py``, so this file is imported as
the top-level module ``_common`` (the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

# pair name -> (teacher name, teacher arch_args, student name, student arch_args, image side)
PAIRS: dict[str, tuple[str, dict, str, dict, int]] = {
    "resnet50-mobilenet_v2": ("resnet50", {}, "mobilenet_v2", {}, 224),
    "resnet50-shufflenet_v2_x1_0": ("resnet50", {}, "shufflenet_v2_x1_0", {}, 224),
    # the demo's pair (mgd_lightning/demos/classification.py): CIFAR ResNet-14 x2 -> ResNet-8 x1 at 28 x 28
    "cifar_resnet14x2-cifar_resnet8x1": ("cifar_resnet", {"depth": 14, "width": 2},
                                         "cifar_resnet", {"depth": 8, "width": 1}, 28),
    "resnet18-mobilenet_v2": ("resnet18", {}, "mobilenet_v2", {}, 64),
}
# method -> DistillationModule keyword arguments; "student" is the bare ClassificationModule
METHODS: dict[str, dict] = {
    "mgd_amp": dict(distiller="mgd", reducer="amp"),
    "kd": dict(distiller="kd", kd_weight=1.0),
    "student": {},
}
PRECISIONS = ("32-true", "bf16-mixed")


def add_device_args(parser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS,
                        help="bf16-mixed: torch.autocast(bfloat16) for steps, the Trainer precision for the pass")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--json", type=Path, default=None)


def setup_device(args) -> torch.device:
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available (torch.cuda.is_available() is False)")
    return torch.device(args.device)


def build_models(pair: str, num_classes: int, seed: int = 0):
    """(teacher, student, side) with random weights drawn from ``seed``."""
    from mgd_lightning.models import build_model

    t_name, t_args, s_name, s_args, side = PAIRS[pair]
    torch.manual_seed(seed)
    teacher = build_model(t_name, num_classes=num_classes, arch_args=t_args or None)
    student = build_model(s_name, num_classes=num_classes, arch_args=s_args or None)
    return teacher, student, side


def build_module(method: str, teacher, student, side: int):
    """The LightningModule of ``method`` on copies of ``teacher`` / ``student`` (same weights every time)."""
    from mgd_lightning import ClassificationModule, DistillationModule

    if method == "student":
        return ClassificationModule(copy.deepcopy(student))
    return DistillationModule(copy.deepcopy(teacher), copy.deepcopy(student), input_size=(3, side, side),
                              **METHODS[method])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


@contextlib.contextmanager
def quiet():
    """``self.log`` outside a Trainer and Lightning's hints only warn: silence them for the tables."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def env(device: torch.device, **extra) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    out.update(extra)
    return out


def write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def time_pass(callback, trainer, pl_module) -> dict:
    """Time the matching pass of ``callback`` (an MGDMatchingCallback with a ``bare(trainer, pl_module)`` method
    timing the same batches without costs, ``repeats`` and ``profile``): one warm-up of each, then ``repeats``
    alternate runs; medians, their ratio, images per second, one whole update and (``profile``) a profile."""
    device = pl_module.device
    callback.bare(trainer, pl_module)  # warm-ups
    _, count = callback.compute_costs(trainer, pl_module)
    bare_s, pass_s = [], []
    for _ in range(callback.repeats):
        bare_s.append(timed(lambda: callback.bare(trainer, pl_module), device))
        pass_s.append(timed(lambda: callback.compute_costs(trainer, pl_module), device))
    update_s = timed(lambda: callback.update_matching(trainer, pl_module), device)
    images = int(count)
    result = {
        "images": images, "bare_s": bare_s, "pass_s": pass_s,
        "bare_median_s": median(bare_s), "pass_median_s": median(pass_s),
        "ratio": median(pass_s) / median(bare_s),
        "bare_images_per_s": images / median(bare_s), "pass_images_per_s": images / median(pass_s),
        "update_s": update_s, "solve_s": callback.history[-1]["solve_s"],
    }
    if callback.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            callback.compute_costs(trainer, pl_module)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        result["profile"] = prof.key_averages().table(sort_by=key, row_limit=15)
    return result
