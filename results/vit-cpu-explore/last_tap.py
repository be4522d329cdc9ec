"""Exploration beside the vision-transformer study (not a study row; no Holm): ViT -> CNN MGD-AMP on the last tap
pair only (the ViT's blocks.5, a 7 x 7 grid, against ResNet-8's 7 px stage: no upsampling), 5 seeds, paired with
results/vit-cpu's runs of the same seeds (same student initialisation, same images in the same order).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python results/vit-cpu-explore/last_tap.py

Needs results/vit-cpu/teachers/vit_teacher.pt (git-ignored: `make vit` trains it); writes
results/vit-cpu-explore/runs/cnn_mgd_last/seed<k>/result.json and prints the paired differences.
"""

import json
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from mgd_lightning import DistillationModule
from mgd_lightning.experiments import transformers as tr
from mgd_lightning.experiments.claims import paired, t_interval
from mgd_lightning.experiments.runner import run_jobs

HERE = Path(__file__).resolve().parent
STUDY = HERE.parent / "vit-cpu"


def last_tap_row():
    """The study's ViT -> CNN MGD-AMP row, with only its last tap pair."""
    probe = DistillationModule(tr._model("vit_teacher", 10), tr._model("cnn_student", 10), input_size=(3, 28, 28),
                               loss_factor=1e3)
    row = tr._mgd("ViT -> CNN: MGD-AMP, last tap only", "vit_cnn")
    return replace(row, module={**row.module, "teacher_taps": [probe.teacher_taps.taps[-1]],
                                "student_taps": [probe.student_taps.taps[-1]]})


def job(seed: int):
    tr.ROWS["cnn_mgd_last"] = last_tap_row()
    return tr.run_vit("cnn_mgd_last", seed, tr.SETTINGS["vit-cpu"], HERE)


def main():
    (HERE / "teachers").mkdir(exist_ok=True)
    shutil.copy(STUDY / "teachers" / "vit_teacher.pt", HERE / "teachers" / "vit_teacher.pt")
    seeds = tr.SETTINGS["vit-cpu"].seeds
    todo = [(s,) for s in seeds if not (HERE / "runs" / "cnn_mgd_last" / f"seed{s}" / "result.json").is_file()]
    failed = run_jobs(todo, job, processes=2, threads=1, describe=lambda j: f"seed {j[0]}")
    if failed:
        raise SystemExit(f"failed: {failed}")

    def runs(folder: Path, row: str):
        return [json.loads((folder / "runs" / row / f"seed{s}" / "result.json").read_text()) for s in seeds]

    last = runs(HERE, "cnn_mgd_last")
    sys.stdout.write(f"last tap only: {statistics.mean(r['top1_err'] for r in last):.2f} % mean top-1 error over "
                     f"{len(seeds)} seeds\n")
    for other in ("cnn_alone", "cnn_mgd", "cnn_kd"):
        d = paired(last + runs(STUDY, other), "cnn_mgd_last", other)
        (low, high), m, sd = t_interval(d), statistics.mean(d), statistics.stdev(d)
        sys.stdout.write(f"last tap only vs {other}: {m:+.2f} ± {sd:.2f}, 95 % CI [{low:.2f}, {high:.2f}], "
                         f"better in {sum(x < 0 for x in d)}/{len(d)} seeds\n")

if __name__ == "__main__":
    main()
