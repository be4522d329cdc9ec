"""The issue's "must show" example, run as a script (strategy="ddp" re-executes sys.argv).

    python tests/scripts/must_show.py OUT_DIR [DEVICES]

Each rank saves its final matchings and the indices of its matching pass to OUT_DIR/rank{r}.pt.
"""

import sys
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import pl

out = Path(sys.argv[1])
devices = int(sys.argv[2]) if len(sys.argv) > 2 else 1
torch.manual_seed(0)
data = TensorDataset(torch.randn(24, 3, 32, 32), torch.randint(0, 10, (24,)))
train_loader = DataLoader(data, batch_size=8)
val_loader = DataLoader(data, batch_size=8)

callback = MGDMatchingCallback()
extra = {"devices": devices, "strategy": "ddp"} if devices > 1 else {}
trainer = pl.Trainer(accelerator="cpu", max_epochs=2, callbacks=[callback], **extra)
module = DistillationModule(
    teacher=torchvision.models.resnet50(num_classes=10), student=torchvision.models.mobilenet_v2(num_classes=10)
)
trainer.fit(module, train_loader, val_loader)
torch.save(
    {"matchings": [m.cpu() for m in module.matchings], "indices": callback.last_indices,
     "images": callback.last_num_images, "epochs": [r["epoch"] for r in callback.history]},
    out / f"rank{trainer.global_rank}.pt",
)
