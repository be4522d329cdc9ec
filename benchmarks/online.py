"""Epoch time with the matching in "pass" mode (the paper) against "online" mode (no extra pass).

    .venv/bin/python benchmarks/online.py --json benchmarks/results/online.json

The demo's pair (CIFAR ResNet-14 x2 -> ResNet-8 x1) at 28 x 28 on random images, MGD-AMP, a real CPU Trainer,
matching every epoch (the pass runs over the whole training set, as on CUB-200 / CIFAR-100). Reports the wall
time of each epoch (train steps + matching update) after the first, median over epochs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from _common import build_models, env, median, quiet, write_json
from torch.utils.data import DataLoader, TensorDataset

from mgd_lightning import DistillationModule, MGDMatchingCallback


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # runs before the matching callback's hook
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())


def run(mode: str, images: int, epochs: int, batch: int) -> dict:
    teacher, student, side = build_models("cifar_resnet14x2-cifar_resnet8x1", 10)
    module = DistillationModule(teacher, student, input_size=(3, side, side), loss_factor=1000.0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(images, 3, side, side, generator=g), torch.randint(0, 10, (images,), generator=g))
    timer = EpochTimer()
    matching = MGDMatchingCallback(update_every_n_epochs=1, mode=mode, progress_bar=False)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer, matching])
    trainer.fit(module, DataLoader(data, batch_size=batch, shuffle=True))
    epoch_s = [b - a for a, b in zip(timer.starts, timer.starts[1:])]
    return {"mode": mode, "epoch_s": epoch_s, "median_epoch_s": median(epoch_s[1:]),
            "matching_s": [r["pass_s"] + r["solve_s"] for r in matching.history],
            "sources": [r["source"] for r in matching.history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with quiet():
        rows = [run(mode, args.images, args.epochs, args.batch) for mode in ("pass", "online")]
    print("| mode | epoch time, median of epochs 2.. (s) | matching update per epoch (s) | sources |")
    print("|---|---:|---:|---|")
    for r in rows:
        sources = ", ".join(r["sources"])
        print(f"| {r['mode']} | {r['median_epoch_s']:.2f} | {median(r['matching_s'][1:]):.3f} | {sources} |")
    saved = 1 - rows[1]["median_epoch_s"] / rows[0]["median_epoch_s"]
    print(f"\nonline saves {100 * saved:.1f} % of the epoch time")
    write_json(args.json, {"env": env(torch.device("cpu")), "rows": rows, "saved_fraction": saved})


if __name__ == "__main__":
    main()
