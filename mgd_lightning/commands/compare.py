"""Compare configs over seeds: train each, evaluate its best checkpoint, aggregate mean ± std (paper Table 1: 5 runs).

    mgd-lightning compare --configs configs/cifar100/mgd_amp_wrn_16_2.yaml \\
        configs/cifar100/ofd_wrn_16_2.yaml configs/cifar100/kd_wrn_16_2.yaml \\
        --seeds 0 1 2 3 4 --out results/compare --extra-args --data.init_args.root /data/cifar

Every (config, seed) runs ``mgd-lightning fit --config CONFIG --seed_everything SEED
--trainer.default_root_dir OUT/NAME/seedSEED EXTRA...`` in this process, then validates (``--eval test``: tests)
the best checkpoint of the run's ``ModelCheckpoint`` (the final model when checkpointing is off). NAME is the
config's file stem (``parent-stem`` where two configs share a stem). The run's ``ModelCheckpoint`` callbacks
write into ``OUT/NAME/seedSEED/checkpoints`` instead of the config's fixed ``dirpath``, so seeds never overwrite
each other or a real run of the same config.

Each finished run writes ``OUT/NAME/seedSEED/result.json``; a restart skips the runs that have one (resumable;
delete a ``result.json`` to redo that run). A restart with other ``--extra-args``, another ``--eval`` or an edited
config is refused (:func:`check_same_setting`): its finished runs would be reported as results of the new setting.
The aggregate goes to ``OUT/results.csv`` and ``OUT/results.md``:
per method the number of seeds, top-1 and top-k (top-5) error in % as mean ± sample std, the trainable
parameters (student + the method's own modules: MGD's tap BatchNorms, OFD's connectors, ...) and the mean
wall time of a run (fit + evaluation).

``--extra-args`` takes everything after it, so put it last.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgd_lightning.commands.cli import run_cli
from mgd_lightning.experiments.records import load_json, plus_minus, write_csv, write_json_atomic
from mgd_lightning.experiments.reports import mean_std
from mgd_lightning.experiments.runner import run_jobs

__all__ = ["main", "run_one", "aggregate", "check_same_setting", "method_names", "RESULT_FILE"]

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CSV_FIELDS = [
    "method", "config", "n_seeds", "seeds", "top1_err_mean", "top1_err_std", "topk", "topk_err_mean",
    "topk_err_std", "trainable_params", "extra_params", "wall_s_mean",
]


def method_names(configs: Sequence[str | Path]) -> list[str]:
    """One name per config: its file stem, or ``parent-stem`` where stems collide."""
    paths = [Path(c) for c in configs]
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}-{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"configs must have distinct names; got {names}")
    return names


def _config_digest(config: str | Path) -> str:
    return hashlib.sha256(Path(config).read_bytes()).hexdigest()


def check_same_setting(out: Path, configs: Sequence[str | Path], names: Sequence[str], seeds: Sequence[int],
                       extra: Sequence[str], stage: str) -> None:
    """``ValueError`` when a finished run under ``out`` that this call would skip was made with other
    ``--extra-args``, another ``--eval`` stage or another content of its config (fields its ``result.json``
    lacks are not compared)."""
    diffs = []
    for config, name in zip(configs, names):
        digest = _config_digest(config)
        for seed in seeds:
            done = load_json(out / name / f"seed{seed}" / RESULT_FILE)
            if done is None:
                continue
            run = f"{name}/seed{seed}"
            if "extra_args" in done and list(done["extra_args"]) != list(extra):
                diffs.append(f"{run}: extra args {list(done['extra_args'])} -> {list(extra)}")
            if "evaluated" in done and done["evaluated"] != stage:
                diffs.append(f"{run}: evaluated {done['evaluated']!r} -> {stage!r}")
            if "config_sha256" in done and done["config_sha256"] != digest:
                diffs.append(f"{run}: {os.fspath(config)} was edited since that run")
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise ValueError(
            f"{out} holds finished runs of another setting ({shown}): they would be skipped and reported as "
            "results of this one. Pass another --out, delete those runs' result.json to redo them, or repeat "
            "their setting."
        )


def _count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def _parameters(model) -> tuple[int, int]:
    """(trainable parameters of the student and the method's modules, those beyond the student)."""
    modules = model.trainable_modules() if hasattr(model, "trainable_modules") else [model]
    trained = getattr(model, "model", None)
    total = _count(modules)
    return total, total - (_count([trained]) if trained is not None else 0)


def _errors(metrics: dict[str, Any], stage: str) -> tuple[float, int | None, float | None]:
    """Top-1 error, k and top-k error (in %) from ``<stage>/acc1`` and the largest ``<stage>/acc<k>``."""
    values = {k: float(v) for k, v in metrics.items()}
    if f"{stage}/acc1" not in values:
        raise KeyError(f"no {stage}/acc1 among the logged metrics {sorted(values)}")
    pattern = re.compile(rf"{re.escape(stage)}/acc(\d+)")
    ks = sorted(int(m.group(1)) for key in values if (m := pattern.fullmatch(key)) and m.group(1) != "1")
    top1 = 100.0 * (1.0 - values[f"{stage}/acc1"])
    if not ks:
        return top1, None, None
    return top1, ks[-1], 100.0 * (1.0 - values[f"{stage}/acc{ks[-1]}"])


def _redirect_checkpoints(trainer, run_dir: Path) -> None:
    """Point every ModelCheckpoint of the run at ``run_dir/checkpoints[<i>]`` (fresh)."""
    callbacks = trainer.checkpoint_callbacks
    for i, callback in enumerate(callbacks):
        dirpath = run_dir / ("checkpoints" if len(callbacks) == 1 else f"checkpoints{i}")
        shutil.rmtree(dirpath, ignore_errors=True)  # an interrupted earlier try of this run
        callback.dirpath = os.fspath(dirpath.resolve())


def run_one(config: str | Path, name: str, seed: int, out: Path, extra: Sequence[str] = (),
            stage: str = "val") -> dict[str, Any]:
    """Fit ``config`` with ``seed`` into ``out/name/seed<seed>``, evaluate, write and return its result."""
    run_dir = out / name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("run %s seed %d -> %s", name, seed, run_dir)
    start = time.perf_counter()
    args = ["--config", os.fspath(config), "--seed_everything", str(seed),
            "--trainer.default_root_dir", os.fspath(run_dir), *extra]
    # run=False: the checkpoint folder is redirected before fit (the configs fix a dirpath per config).
    cli = run_cli(args, run=False)
    trainer, model = cli.trainer, cli.model
    _redirect_checkpoints(trainer, run_dir)
    trainer.fit(model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else ""
    evaluate = trainer.test if stage == "test" else trainer.validate
    (metrics,) = evaluate(model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)
    top1, k, topk = _errors(metrics, stage)
    trainable, extra_params = _parameters(model)
    result = {
        "method": name,
        "config": os.fspath(config),
        "config_sha256": _config_digest(config),
        "seed": seed,
        "top1_err": top1,
        "topk": k,
        "topk_err": topk,
        "trainable_params": trainable,
        "extra_params": extra_params,
        "wall_s": time.perf_counter() - start,
        "fit_s": fit_s,
        "evaluated": stage,
        "checkpoint": os.path.relpath(best, run_dir) if best else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "metrics": {key: float(v) for key, v in metrics.items()},
        "extra_args": list(extra),
    }
    write_json_atomic(run_dir / RESULT_FILE, result)
    log.info("run %s seed %d: top-1 err %.2f%%, %.1f s", name, seed, top1, result["wall_s"])
    return result


def aggregate(results: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method (in ``names`` order) over its finished seeds."""
    rows = []
    for name in names:
        runs = sorted((r for r in results if r["method"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        top1, top1_std = mean_std([r["top1_err"] for r in runs])
        ks = {r["topk"] for r in runs}
        k = ks.pop() if len(ks) == 1 else None
        topk, topk_std = mean_std([r["topk_err"] for r in runs]) if k is not None else (None, None)
        rows.append({
            "method": name, "config": runs[0]["config"], "n_seeds": len(runs),
            "seeds": " ".join(str(r["seed"]) for r in runs),
            "top1_err_mean": top1, "top1_err_std": top1_std, "topk": k, "topk_err_mean": topk,
            "topk_err_std": topk_std, "trainable_params": runs[0]["trainable_params"],
            "extra_params": runs[0]["extra_params"], "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
        })
    return rows


def markdown(rows: list[dict[str, Any]], stage: str) -> str:
    ks = {r["topk"] for r in rows if r["topk"] is not None}
    k = f"top-{ks.pop()}" if len(ks) == 1 else "top-k"
    lines = [
        f"| method | n seeds | top-1 err (%) | {k} err (%) | trainable params | mean wall time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['n_seeds']} | {plus_minus(r['top1_err_mean'], r['top1_err_std'])} "
            f"| {plus_minus(r['topk_err_mean'], r['topk_err_std'])} | {r['trainable_params']:,} "
            f"| {r['wall_s_mean']:.1f} |"
        )
    return (f"Errors on the {'validation' if stage == 'val' else 'test'} set of each run's best checkpoint; "
            "mean ± sample std over seeds.\n\n" + "\n".join(lines) + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgd-lightning compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", nargs="+", required=True, help="YAML configs of mgd-lightning fit")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seed_everything values (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("results/compare"), help="output folder")
    parser.add_argument("--eval", choices=("val", "test"), default="val", dest="stage",
                        help="evaluate the best checkpoint with trainer.validate (default) or trainer.test")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing run")
    parser.add_argument("--extra-args", nargs=argparse.REMAINDER, default=[],
                        help="arguments forwarded to every run (everything after this flag)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run (or resume) the comparison and write ``results.csv`` / ``results.md`` under ``--out``."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    missing = [c for c in args.configs if not Path(c).is_file()]
    if missing:
        raise SystemExit(f"mgd-lightning compare: error: --configs {missing[0]!r}: no such file"
                         + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    out: Path = args.out
    try:
        names = method_names(args.configs)
        check_same_setting(out, args.configs, names, args.seeds, args.extra_args, args.stage)
    except ValueError as err:
        raise SystemExit(f"mgd-lightning compare: error: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    results, jobs = [], []
    for config, name in zip(args.configs, names):
        for seed in args.seeds:
            done = load_json(out / name / f"seed{seed}" / RESULT_FILE)
            if done is not None:
                log.info("run %s seed %d: finished earlier, skipped", name, seed)
                results.append(done)
            else:
                jobs.append((config, name, seed, out, args.extra_args, args.stage))
    # In this process, one after the other: each run may use every core and device (its config says how).
    failed = run_jobs(jobs, run_one, on_done=results.append, fail_fast=args.fail_fast,
                      describe=lambda job: f"run {job[1]}/seed{job[2]}")
    rows = aggregate(results, names)
    write_csv(out / "results.csv", rows, CSV_FIELDS)
    table = markdown(rows, args.stage)
    (out / "results.md").write_text(table)
    print(table)  # noqa: T201 - the command's output
    if failed:
        log.error("%d run(s) failed: %s", len(failed), ", ".join(failed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
