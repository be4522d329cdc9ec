"""The ``mgd-lightning`` console entry point: one subcommand per module of :mod:`mgd_lightning.commands`.

    mgd-lightning fit --config configs/cub200/mgd_amp_mobilenet_v2.yaml --data.init_args.root /data/CUB_200_2011
    mgd-lightning predict --config configs/digits/mgd_amp.yaml --ckpt_path runs/digits/mgd_amp/checkpoints/best.ckpt
    mgd-lightning export --ckpt_path runs/digits/mgd_amp/checkpoints/best.ckpt --output student.pt
    mgd-lightning taps resnet50 --student efficientnet_b0 [--input-size 3 224 224]
    mgd-lightning demo
    mgd-lightning study [--setting cpu|gpu]
    mgd-lightning compare --configs A.yaml B.yaml --seeds 0 1 2 --out runs/compare

``demo``, ``study``, ``compare``, ``export`` and ``taps`` go to their modules (imported only when asked for);
everything else is the LightningCLI's (:mod:`mgd_lightning.commands.cli`: ``fit`` / ``validate`` / ``test`` /
``predict``, ``--help``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "main"]

#: the subcommands beside the LightningCLI's: name -> the module whose ``main(argv)`` runs it on the arguments after
#: its name (imported only when asked for)
SUBCOMMANDS: dict[str, str] = {
    "demo": "mgd_lightning.commands.demo",
    "study": "mgd_lightning.commands.study",
    "compare": "mgd_lightning.commands.compare",
    "export": "mgd_lightning.commands.export",
    "taps": "mgd_lightning.commands.taps",
}


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point ``mgd-lightning``: ``args`` (default ``sys.argv[1:]``) to the subcommand they name.

    A LightningCLI run ends on a user error (a missing file, an unreadable checkpoint, a non-finite loss) with its
    one-line message, exit status 1 (:func:`mgd_lightning.commands.cli.run_command`).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
        return
    from mgd_lightning.commands.cli import run_command

    run_command(args)


if __name__ == "__main__":
    main()
