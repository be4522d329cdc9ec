"""Tiny networks with declared distillation taps, and small real data, shared by the tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset


class ToyNet(nn.Module):
    """conv-BN-[tap]-ReLU stages, stride 2 each, then avgpool + linear. Taps: ``tap{i}`` outputs."""

    default_input_size = (3, 16, 16)

    def __init__(self, widths=(8, 16), num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            self.convs.append(nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(w))
            setattr(self, f"tap{i}", nn.Identity())
            c = w
        self.fc = nn.Linear(c, num_classes)
        self.distillation_taps = tuple(f"tap{i}" for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(getattr(self, f"tap{i}")(bn(conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def digits_dataset(size: int = 16, limit: int | None = None) -> TensorDataset:
    """scikit-learn's 1,797 real 8x8 digits as 3 x size x size float images, labels 0-9."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.3) / 0.4
    y = torch.from_numpy(data.target.astype(np.int64))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return TensorDataset(x, y)
