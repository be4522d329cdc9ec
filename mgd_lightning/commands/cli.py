"""The LightningCLI of ``mgd-lightning``: its ``fit`` / ``validate`` / ``test`` / ``predict`` runs.

    mgd-lightning fit --config configs/cub200/mgd_amp_mobilenet_v2.yaml --data.init_args.root /data/CUB_200_2011
    mgd-lightning predict --config configs/digits/mgd_amp.yaml --ckpt_path runs/digits/mgd_amp/checkpoints/best.ckpt

The other subcommands (``export``, ``taps``, ``demo``, ``study``) are dispatched by :mod:`mgd_lightning.commands.main`.

``MGDMatchingCallback`` is always present and configurable under ``mgd:`` (it does nothing for a
plain ``ClassificationModule`` or a ``matching: false`` ablation). Logs go to TensorBoard and CSV
under ``trainer.default_root_dir`` by default: ``lightning_logs/version_N/`` (TensorBoard) and its ``csv/``
subfolder (``metrics.csv``).

Beyond LightningCLI:

* ``null`` reaches every optional argument, also those of a model inside the module
  (``--model.init_args.teacher.init_args.checkpoint null``): jsonargparse turns a ``null`` two class levels
  deep into the string ``'None'`` (it re-parses ``f"--{key}={value}"`` after loading the value), so such
  options are passed to it as the equivalent nested dict;
* the checkpoint files a run reads (``build_model(checkpoint=...)``, ``--ckpt_path``) are checked before
  anything is built: an empty, truncated or non-PyTorch file is a one-line error naming it;
* ``--ckpt_path last`` without a last checkpoint is an error, not a silent fresh start;
* a constructor's ``ValueError`` (``--model.init_args.reducer xyz``, ``--mgd.update_every_n_epochs 0``) and a
  checkpoint that does not fit the network built (another class count or architecture) are one
  ``mgd-lightning: error: ...`` line, not jsonargparse's "Does not validate against any of the Union subtypes";
* ``predict`` writes its predictions: a :class:`~mgd_lightning.distill.prediction_writer.PredictionWriter`
  (``predictions.csv`` in the run folder, its path printed; for ``task: detection`` a ``DetectionWriter``,
  ``detections.json`` in COCO's results format) unless the Trainer's callbacks have a prediction writer already
  (``--trainer.callbacks+=mgd_lightning.distill.prediction_writer.PredictionWriter --trainer.callbacks.output=PATH
  --trainer.callbacks.top_k=5`` for another path or the top-k).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace, get_loader, set_loader

from mgd_lightning._lightning import callbacks, cli, loggers, map_class_path, pl
from mgd_lightning.checkpoints import CheckpointFileError, CheckpointMismatchError, check_checkpoint_file
from mgd_lightning.data.datasets import DataFileError
from mgd_lightning.data.download import DownloadError
from mgd_lightning.distill.callback import MGDMatchingCallback
from mgd_lightning.distill.classifier import ModelDataMismatchError, NonFiniteLossError
from mgd_lightning.distill.prediction_writer import DetectionWriter, PredictionFormatError, PredictionWriter
from mgd_lightning.distill.teacher import TeacherMismatchError

BasePredictionWriter, ModelCheckpoint, OnExceptionCheckpoint = (
    callbacks.BasePredictionWriter, callbacks.ModelCheckpoint, callbacks.OnExceptionCheckpoint)
LightningCLI = cli.LightningCLI
CSVLogger, TensorBoardLogger = loggers.CSVLogger, loggers.TensorBoardLogger

__all__ = ["MGDCLI", "USER_ERRORS", "ConfigError", "run_cli", "run_command"]

#: jsonargparse's parser mode of :class:`MGDCLI`: YAML, with the dotted paths of the other Lightning namespace
#: (``class_path: pytorch_lightning.callbacks.ModelCheckpoint`` in the configs) mapped to the selected one
#: (:func:`mgd_lightning._lightning.map_class_path`), so the configs run under either backend
PARSER_MODE = "mgd_lightning_yaml"
_yaml_load = get_loader("yaml")


def _load_mapped(value: str) -> Any:
    return map_class_path(_yaml_load(value))


set_loader(PARSER_MODE, _load_mapped, exceptions=(yaml.YAMLError,))

#: the subclass-mode arguments whose init_args may hold classes of their own (the networks of a module)
_NESTING_ARGUMENTS = ("model", "data")
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


def _is_null(value: str) -> bool:
    """YAML's spellings of null (the empty string stays a string for jsonargparse)."""
    return value.strip() in ("null", "Null", "NULL", "~")


def _nested_null_as_dict(key: str) -> tuple[str, str] | None:
    """``("--model", '{"init_args": {"teacher": {"init_args": {"checkpoint": null}}}}')`` for
    ``model.init_args.teacher.init_args.checkpoint`` (or ``model.teacher.checkpoint``), ``None`` for a key less
    than two class levels deep (jsonargparse parses ``null`` right there)."""
    parts = key.split(".")
    if parts[0] not in _NESTING_ARGUMENTS or {"class_path", "dict_kwargs", "help"} & set(parts):
        return None
    names = [p for p in parts[1:] if p != "init_args"]
    if len(names) < 2 or not all(names):
        return None
    node: dict[str, Any] = {names[-1]: None}
    for name in reversed(names[:-1]):
        node = {name: {"init_args": node}}
    return f"--{parts[0]}", json.dumps({"init_args": node})


def nested_nulls_as_dicts(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--<model|data>.<class>.<...>.<arg> null`` two or more class levels deep written
    as the equivalent ``--<model|data> '{"init_args": {...: null}}'`` (merged by jsonargparse with the values
    before it, like the dotted form), so that the value arrives as ``None`` instead of ``'None'``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # the rest is positional
            out += argv[i:]
            break
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            step = 1
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, step = argv[i + 1], 2
            rewritten = _nested_null_as_dict(key) if (eq or step == 2) and _is_null(value) else None
            if rewritten is not None:
                out.append("=".join(rewritten))
                i += step
                continue
        out.append(token)
        i += 1
    return out


def _checkpoint_options(node: Any, key: str = "") -> list[tuple[str, str]]:
    """``(option, path)`` of every ``checkpoint`` argument of a class in a parsed config (``build_model``'s)."""
    found = []
    if isinstance(node, Namespace):
        node = node.as_dict()
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f"{key}.{k}" if key else str(k)
            if k == "checkpoint" and isinstance(v, str) and key.endswith("init_args"):
                found.append((sub, v))
            else:
                found += _checkpoint_options(v, sub)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _checkpoint_options(v, f"{key}[{i}]")
    return found


class _SubfolderCSVLogger(CSVLogger):
    """The CSV logger of :class:`MGDCLI`: writes into the TensorBoard run folder's ``csv/`` subfolder and reports
    the TensorBoard logger's version, so that the progress bar shows ``v_num=N`` (Lightning joins the loggers'
    distinct versions: a ``"csv"`` version showed as ``v_num=_csv``)."""

    def __init__(self, tensorboard: Any) -> None:
        super().__init__(tensorboard.log_dir, name="", version="csv")
        self._tensorboard = tensorboard

    @property
    def version(self) -> int | str:
        return self._tensorboard.version

    @property
    def log_dir(self) -> str:
        return str(Path(self.root_dir) / "csv")


class ConfigError(ValueError):
    """A class of the config refused its arguments (a constructor's ``ValueError``): its message, in one line."""


def _constructor_message(error: BaseException) -> str:
    """The message of the innermost error behind ``error`` (the constructor's own, under jsonargparse's wrappers),
    prefixed with the class that raised it when it is one of this package's."""
    seen, root = set(), error
    while id(root) not in seen and (root.__cause__ or root.__context__) is not None:
        seen.add(id(root))
        root = root.__cause__ or root.__context__
    message = " ".join(str(root).split()) or type(root).__name__
    owner = None
    tb = root.__traceback__
    while tb is not None:  # the innermost constructor of this package in the traceback
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and frame.f_globals.get("__name__", "").startswith("mgd_lightning."):
            instance = frame.f_locals.get("self")
            owner = type(instance).__name__ if instance is not None else owner
        tb = tb.tb_next
    return f"{owner}: {message}" if owner and not message.startswith(owner) else message


class MGDCLI(LightningCLI):
    """LightningCLI with the matching callback under ``mgd:`` (and the checks of the module docstring)."""

    def init_parser(self, **kwargs: Any):
        """Lightning's parser, reading YAML with class paths mapped to the selected Lightning namespace
        (:data:`PARSER_MODE`)."""
        kwargs.setdefault("parser_mode", PARSER_MODE)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(MGDMatchingCallback, "mgd")

    def parse_arguments(self, parser, args) -> None:
        """jsonargparse's parse, with ``null`` two class levels deep passed as a nested dict
        (:func:`nested_nulls_as_dicts`); then the ``--ckpt_path`` file is checked (LightningCLI reads its
        hyperparameters right after this)."""
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
        else:
            argv = list(sys.argv[1:] if args is None else args)
            fixed = nested_nulls_as_dicts(argv)
            if args is None and fixed != argv:  # the command line itself, rewritten
                self.config = parser.parse_args(fixed)
            else:
                super().parse_arguments(parser, None if args is None else fixed)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if isinstance(ckpt_path, str) and ckpt_path not in _SPECIAL_CKPT_PATHS and "://" not in ckpt_path \
                and not ckpt_path.lower().startswith("registry"):  # Lightning's model-registry names
            check_checkpoint_file(ckpt_path, what="--ckpt_path")

    def instantiate_classes(self) -> None:
        """First, the checkpoint files the networks load are checked (one-line errors instead of a crash in
        jsonargparse's error formatter for an empty file); then the classes are built. A ``ValueError`` of a
        constructor (``--model.init_args.reducer xyz``), which jsonargparse wraps in its "Does not validate
        against any of the Union subtypes", becomes a :class:`ConfigError` with the constructor's own message."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        for option, path in _checkpoint_options(config):
            check_checkpoint_file(path, what=f"--{option}")
        try:
            super().instantiate_classes()
        except ValueError as error:
            if _user_error(error) is not None:
                raise
            raise ConfigError(_constructor_message(error)) from error

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        """Lightning's default TensorBoard logger, plus a CSV logger in its ``csv/`` subfolder (two loggers in
        one folder made the CSV logger warn "Experiment logs directory ... exists and is not empty" every run,
        and their ``hparams.yaml`` files overwrote each other)."""
        trainer = super().instantiate_trainer(**kwargs)
        loggers = trainer.loggers
        if len(loggers) == 1 and isinstance(loggers[0], TensorBoardLogger):
            tb = loggers[0]
            trainer.loggers = [tb, _SubfolderCSVLogger(tb)]
        return trainer

    def before_fit(self) -> None:
        if self.config["fit"].get("ckpt_path") == "last":
            self._require_last_checkpoint()

    def fit(self, model: Any, **kwargs: Any) -> None:
        """``trainer.fit``; a resume (``--ckpt_path``) without ModelCheckpoint's "Checkpoint directory ... exists and
        is not empty" warning: the folder holds the checkpoints of the run being resumed, as it should."""
        if kwargs.get("ckpt_path") is None:
            self.trainer.fit(model, **kwargs)
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            self.trainer.fit(model, **kwargs)

    def before_predict(self) -> None:
        """Predictions are written to a file: a :class:`PredictionWriter` (``predictions.csv`` in the run folder),
        for a detection module a :class:`DetectionWriter` (``detections.json``, COCO results), unless the Trainer
        has a prediction writer already."""
        if not any(isinstance(callback, BasePredictionWriter) for callback in self.trainer.callbacks):
            task = getattr(getattr(self.model, "task", None), "name", None)
            self.trainer.callbacks.append(DetectionWriter() if task == "detection" else PredictionWriter())

    def _require_last_checkpoint(self) -> None:
        """Lightning's ``ckpt_path="last"`` without a last checkpoint only warns and trains from scratch (and
        exits 0): after a crash that silently restarts the run. Here it is an error."""
        trainer = self.trainer
        places, found = [], set()
        for callback in trainer.callbacks:
            if isinstance(callback, OnExceptionCheckpoint) and Path(callback.ckpt_path).is_file():
                found.add(callback.ckpt_path)
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            if callback.dirpath is None:
                places.append("a ModelCheckpoint without dirpath (its folder is the new run's "
                              "lightning_logs/version_N/checkpoints, so it never holds an earlier run's)")
                continue
            places.append(str(callback.dirpath))
            found |= callback._find_last_checkpoints(trainer)
        if not found:
            where = "; ".join(places) if places else "nowhere: the run has no ModelCheckpoint"
            raise FileNotFoundError(
                f"--ckpt_path last: no last checkpoint to resume from (looked for last*.ckpt in {where}); "
                "nothing was trained. A run leaves one when its ModelCheckpoint has save_last: true and a fixed "
                "dirpath (as configs/digits/mgd_amp.yaml); pass --ckpt_path PATH to resume from another file, "
                "or drop --ckpt_path to start from scratch."
            )
        newest = max(found, key=lambda p: Path(p).stat().st_mtime)  # the one Lightning resumes from
        check_checkpoint_file(newest, what="--ckpt_path last")


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


#: errors whose message says all: ``main`` prints them as one line instead of a traceback
USER_ERRORS = (FileNotFoundError, CheckpointFileError, CheckpointMismatchError, ConfigError, DataFileError,
               DownloadError, NonFiniteLossError, TeacherMismatchError, ModelDataMismatchError, PredictionFormatError)


def _user_error(error: BaseException) -> BaseException | None:
    """The user-facing error (missing weights, data or checkpoint, an unreadable checkpoint, a non-finite loss)
    behind an error, if any (jsonargparse and Lightning wrap them)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, USER_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def run_command(args: Sequence[str] | None = None) -> None:
    """Run a LightningCLI subcommand (``fit`` / ``validate`` / ``test`` / ``predict``) on ``args``
    (default ``sys.argv[1:]``).

    A missing file (weights not in the torch hub cache, a dataset directory, a checkpoint), an unreadable
    checkpoint or a non-finite training loss ends the run with its one-line message (exit status 1) instead of
    a traceback from inside the argument parser or the Trainer.
    """
    try:
        run_cli(args)
    except Exception as error:  # noqa: BLE001 - re-raised unless its message says all
        known = _user_error(error)
        if known is None:
            raise
        sys.exit(f"mgd-lightning: error: {known}")
