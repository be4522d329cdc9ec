"""``mgd-lightning study``: the paper's comparisons at a scale this machine runs, on real data (Fashion-MNIST).

The studies (:mod:`mgd_lightning.experiments`), chosen by the setting:

* from scratch (``--setting cpu`` / ``gpu`` / ``smoke``; results/study-<setting>): the paper's Tables 1-2, 5 and
  Fig. 4: students trained from random weights with every distiller, reduction and update period;
* transfer (``--setting transfer-cpu`` / ``transfer-gpu`` / ``transfer-smoke``; results/<setting>): the paper's
  Table 3: a pre-trained student fine-tuned on a small target set (30 images per class) with every competitor,
  and the error vs the number of target images per class;
* ImageNet transfer (``--setting imagenet-transfer-cpu`` / ``-gpu`` / ``-smoke``; results/<setting>): Table 3 in its
  own regime, real ImageNet weights (EfficientNet-Lite2 teacher -> Lite0 student), 10 target images per class,
  after a premise check (fine-tuning must beat training from scratch by 10 points, ``premise.json``);
* unsupervised (``--setting unsup-cpu`` / ``-gpu`` / ``-smoke``; results/<setting>): the official ``unsup/`` code's
  question, MGD without labels: a MoCo-v2 teacher, students pre-trained by MoCo-v2, MoCo-v2 + MGD-AMP and MGD-AMP
  alone, evaluated by linear probe and fine-tuning on 10 / 100 labels per class, after a premise check;
* vision transformers (``--setting vit-cpu`` / ``-gpu`` / ``-smoke``; results/<setting>): MGD with no learned
  projector between a CNN and a ViT, both ways (CNN -> ViT against KD and FitNets' learned projector; ViT -> CNN with
  no margin and with the estimated margin), after a premise check (each teacher beats its student alone).

Each writes under ``--out``:

* ``runs/<row>/seed<k>/result.json``: one finished run (a restart skips it: the study is resumable;
  delete the file to redo the run), with its matching history;
* ``results.csv`` / ``runs.csv``: mean ± sample std of top-1 / top-5 error per row / every run;
* ``results.md``: the table and the paper's claims checked against it (paired by seed);
* ``errors.png``, ``matching_cost.png`` (paper Fig. 5), ``match_stability.png`` (Fig. 6), and for the transfer
  study ``size_curve.png`` (error vs target images per class);
* ``environment.json`` and ``command.txt``: software versions, machine, setting, the exact command(s);
* ``claims.json``: the paper's claims checked.

``cpu`` takes about 90-115 min on 2 CPU cores from a fresh clone, ``transfer-cpu`` about 40 min (both with
setup); the ``gpu`` settings are for a machine with a GPU; the ``smoke`` settings are seconds-long checks of the
machinery. ``--rows``, ``--seeds``, ``--epochs``, ``--jobs`` and ``--threads`` override the setting; a folder
holding runs of another study or setting is refused rather than mixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgd_lightning.experiments import imagenet_transfer, scratch, transfer, transformers, unsupervised
from mgd_lightning.experiments.study import PremiseError, Study, report_finished, run_study

__all__ = ["STUDIES", "main", "study_of"]

#: every study, each with its settings (setting names are unique across studies)
STUDIES: tuple[Study, ...] = (scratch.STUDY, transfer.STUDY, imagenet_transfer.STUDY, unsupervised.STUDY,
                              transformers.STUDY)


def study_of(setting_name: str) -> Study:
    """The study that has the setting ``setting_name``."""
    for study in STUDIES:
        if setting_name in study.settings:
            return study
    names = [n for s in STUDIES for n in s.settings]
    raise ValueError(f"setting must be one of {names}, got {setting_name!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgd-lightning study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=[n for s in STUDIES for n in s.settings], default="cpu",
                        help="cpu: from scratch, 2 CPU cores, about 90-115 min (default); gpu: whole training set, "
                             "30 epochs, 5 seeds; transfer-cpu: pre-trained students on 30 images per class, "
                             "about 40 min; imagenet-transfer-cpu: ImageNet EfficientNet-Lite2 -> Lite0 on 10 "
                             "images per class; unsup-cpu: without labels; vit-cpu: CNN <-> ViT, about 60 min; the "
                             "-gpu settings; smoke, transfer-smoke, imagenet-transfer-smoke, unsup-smoke, vit-smoke: "
                             "seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: results/study-<setting>, results/<setting> for transfer)")
    parser.add_argument("--root", default=None, help="a folder with the Fashion-MNIST IDX files (default: the "
                                                     "Debian package's /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help=f"a subset of the study's rows; from scratch: {' '.join(scratch.ROWS)}; "
                             f"transfer: {' '.join(transfer.ROWS)}; "
                             f"imagenet transfer: {' '.join(imagenet_transfer.ROWS)}; "
                             f"unsupervised: {' '.join(unsupervised.ROWS)}; "
                             f"vision transformers: {' '.join(transformers.ROWS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the setting's)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (milestones scale with it)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from finished runs")
    return parser


def _setting(args: argparse.Namespace) -> Any:
    study = study_of(args.setting)
    setting = study.settings[args.setting]
    changes: dict[str, Any] = {}
    if args.rows:
        unknown = [r for r in args.rows if r not in study.rows]
        if unknown:
            raise SystemExit(f"mgd-lightning study: --rows: {unknown} not rows of the {study.name} study "
                             f"(setting {args.setting}); its rows: {' '.join(study.rows)}")
        changes["rows"] = tuple(args.rows)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    for key in ("epochs", "jobs", "threads"):  # 0 is a value given (and wrong), not "the setting's"
        value = getattr(args, key)
        if value is not None and value < 1:
            raise SystemExit(f"mgd-lightning study: error: --{key} must be >= 1, got {value} (leave it out for "
                             f"the setting's {getattr(setting, key, None)})")
    if args.epochs is not None:
        scale = args.epochs / setting.epochs
        changes["epochs"] = args.epochs
        changes["lr_milestones"] = tuple(sorted({max(1, round(m * scale)) for m in setting.lr_milestones}))
    for key in ("jobs", "threads"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    return dataclasses.replace(setting, **changes)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    study = study_of(args.setting)
    setting = _setting(args)
    out = args.out or Path("results") / study.folder.format(setting=args.setting)
    if args.report_only:  # the checks of a run: a folder of another study or setting is refused, not overwritten
        try:
            _, text = report_finished(study, out, args.setting, setting)
        except ValueError as err:
            raise SystemExit(f"mgd-lightning study: error: {err}") from None
    else:
        out.mkdir(parents=True, exist_ok=True)
        command = "mgd-lightning study " + shlex.join(sys.argv[1:] if argv is None else argv)
        try:
            text = run_study(study, args.setting, setting, out, args.root, command)
        except (FileNotFoundError, ValueError, PremiseError) as err:
            raise SystemExit(f"mgd-lightning study: {err}") from None
    print(text)  # noqa: T201 - the command's output


if __name__ == "__main__":
    main()
