"""The ``mgd-lightning`` command: LightningCLI runs (fit / validate / test / predict) and the demo.

    mgd-lightning fit --config configs/cub200/mgd_amp_mobilenet_v2.yaml --data.init_args.root /data/CUB_200_2011
    mgd-lightning demo
    mgd-lightning study [--setting cpu|gpu]

``MGDMatchingCallback`` is always present and configurable under ``mgd:`` (it does nothing for a
plain ``ClassificationModule`` or a ``matching: false`` ablation). Logs go to TensorBoard and CSV
under ``trainer.default_root_dir`` by default.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from mgd_lightning.distill.callback import MGDMatchingCallback

__all__ = ["MGDCLI", "main"]

class MGDCLI(LightningCLI):
    """LightningCLI with the matching callback under ``mgd:``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(MGDMatchingCallback, "mgd")

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        """Lightning's default TensorBoard logger, plus a CSV logger writing into the same version folder."""
        trainer = super().instantiate_trainer(**kwargs)
        loggers = trainer.loggers
        if len(loggers) == 1 and isinstance(loggers[0], TensorBoardLogger):
            tb = loggers[0]
            trainer.loggers = [tb, CSVLogger(tb.save_dir, name=tb.name, version=tb.version)]
        return trainer


def run_cli(args: Sequence[str] | None = None, run: bool = True) -> MGDCLI:
    """Build (and by default run) the CLI on ``args``; returns it (tests, notebooks)."""
    return MGDCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        run=run,
    )


def _missing_file(error: BaseException) -> FileNotFoundError | None:
    """The FileNotFoundError (missing weights, data, checkpoint) behind a configuration error, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, FileNotFoundError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point ``mgd-lightning``.

    A missing file (weights not in the torch hub cache, a dataset directory, a checkpoint) ends the run
    with its one-line message instead of a traceback from inside the argument parser.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "demo":
        from mgd_lightning.demo import main as demo_main

        demo_main(argv[1:])
        return
    if argv and argv[0] == "study":
        from mgd_lightning.study import main as study_main

        study_main(argv[1:])
        return
    try:
        run_cli(args)
    except Exception as error:  # noqa: BLE001 - re-raised unless it is a missing file
        missing = _missing_file(error)
        if missing is None:
            raise
        sys.exit(f"mgd-lightning: error: {missing}")


if __name__ == "__main__":
    main()
