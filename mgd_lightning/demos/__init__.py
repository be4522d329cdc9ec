"""The demos' bodies: teacher, baseline student and MGD-AMP student trained in minutes on a CPU, a table and the
matching plots (:mod:`mgd_lightning.plotting`).

* :mod:`mgd_lightning.demos.classification`: CIFAR ResNets on Fashion-MNIST (or scikit-learn's digits);
* :mod:`mgd_lightning.demos.detection`: RetinaNets on synthetic shapes in the COCO layout.

Their command lines (``mgd-lightning demo [--task detection]``) are :mod:`mgd_lightning.commands.demo`'s.
"""
