"""The comparison runner: seeds x configs, per-run result.json, aggregate CSV / markdown, resumable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

import mgd_lightning.commands.compare as compare

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits" / "mgd_amp.yaml"
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.logger", "false",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--mgd.num_samples", "32",
]


@pytest.fixture
def configs(tmp_path) -> list[Path]:
    """Two tiny digits configs: MGD-AMP as shipped, and KD (logits only) with the same networks."""
    cfg = yaml.safe_load(CONFIG.read_text())
    mgd = tmp_path / "mgd_amp.yaml"
    mgd.write_text(yaml.safe_dump(cfg))
    cfg["model"]["init_args"].update(distiller="kd", kd_weight=1.0)
    kd = tmp_path / "kd.yaml"
    kd.write_text(yaml.safe_dump(cfg))
    return [mgd, kd]


@pytest.fixture
def counted(monkeypatch) -> list[list[str]]:
    """The argument lists of every run_cli call the runner makes."""
    calls: list[list[str]] = []
    real = compare.run_cli

    def run_cli(args, run=True):
        calls.append(list(args))
        return real(args, run=run)

    monkeypatch.setattr(compare, "run_cli", run_cli)
    return calls


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_compare_runs_aggregates_and_resumes(configs, counted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder
    out = tmp_path / "out"
    argv = ["--configs", *map(str, configs), "--seeds", "0", "1", "--out", str(out), "--extra-args", *TINY]
    compare.main(argv)

    assert len(counted) == 4
    assert {(Path(a[a.index("--config") + 1]).stem, a[a.index("--seed_everything") + 1]) for a in counted} == {
        ("mgd_amp", "0"), ("mgd_amp", "1"), ("kd", "0"), ("kd", "1")}
    assert all(a[-len(TINY):] == TINY for a in counted)  # --extra-args reach every run
    results = {(m, s): json.loads((out / m / f"seed{s}" / "result.json").read_text())
               for m in ("mgd_amp", "kd") for s in (0, 1)}
    for (method, seed), r in results.items():
        assert r["method"] == method and r["seed"] == seed and r["topk"] == 5
        assert 0 <= r["top1_err"] <= 100 and 0 <= r["topk_err"] <= r["top1_err"]
        assert r["top1_err"] == pytest.approx(100 * (1 - r["metrics"]["val/acc1"]))
        assert r["global_step"] == 2 and r["wall_s"] > 0
        assert r["checkpoint"] is not None and (out / method / f"seed{seed}" / r["checkpoint"]).is_file()
    # MGD's trainable extras are the student-side BatchNorms (weight + bias per channel); KD adds nothing
    assert results["kd", 0]["extra_params"] == 0
    assert results["mgd_amp", 0]["extra_params"] > 0
    assert (results["mgd_amp", 0]["trainable_params"] - results["kd", 0]["trainable_params"]
            == results["mgd_amp", 0]["extra_params"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lightning_logs").exists()

    rows = _csv(out / "results.csv")
    assert list(rows) == ["mgd_amp", "kd"]
    for method, row in rows.items():
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1" and row["topk"] == "5"
        top1 = [results[method, s]["top1_err"] for s in (0, 1)]
        assert float(row["top1_err_mean"]) == pytest.approx(sum(top1) / 2)
        assert float(row["top1_err_std"]) == pytest.approx(abs(top1[0] - top1[1]) / 2**0.5)
        assert float(row["topk_err_std"]) >= 0
        assert int(row["trainable_params"]) == results[method, 0]["trainable_params"]
    md = (out / "results.md").read_text()
    assert "| method | n seeds | top-1 err (%) | top-5 err (%) | trainable params | mean wall time (s) |" in md
    mgd_row = next(line for line in md.splitlines() if line.startswith("| mgd_amp |"))
    assert " | 2 | " in mgd_row and mgd_row.count("±") == 2

    # resume: only the run whose result.json is gone is redone; the others are read back untouched
    mtimes = {k: (out / k[0] / f"seed{k[1]}" / "result.json").stat().st_mtime_ns for k in results}
    (out / "kd" / "seed1" / "result.json").unlink()
    counted.clear()
    compare.main(argv)
    assert len(counted) == 1 and Path(counted[0][counted[0].index("--config") + 1]).stem == "kd"
    assert counted[0][counted[0].index("--seed_everything") + 1] == "1"
    for key, mtime in mtimes.items():
        changed = (out / key[0] / f"seed{key[1]}" / "result.json").stat().st_mtime_ns != mtime
        assert changed == (key == ("kd", 1))
    assert _csv(out / "results.csv")["kd"]["n_seeds"] == "2"


def test_method_names_and_aggregate():
    assert compare.method_names(["a/kd.yaml", "b/mgd.yaml"]) == ["kd", "mgd"]
    assert compare.method_names(["cifar/kd.yaml", "cub/kd.yaml"]) == ["cifar-kd", "cub-kd"]
    runs = [dict(method="m", config="m.yaml", seed=s, top1_err=e, topk=5, topk_err=e / 4, trainable_params=10,
                 extra_params=0, wall_s=2.0) for s, e in ((0, 20.0), (1, 22.0))]
    (row,) = compare.aggregate(runs + [dict(runs[0], method="other")], ["m"])
    assert row["n_seeds"] == 2 and row["top1_err_mean"] == 21.0 and row["top1_err_std"] == pytest.approx(2**0.5)
    (single,) = compare.aggregate(runs[:1], ["m"])
    assert single["top1_err_std"] is None and "20.00 |" in compare.markdown([single], "val")


def test_a_missing_config_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"compare: error: --configs 'missing\.yaml': no such file") as info:
        compare.main(["--configs", "missing.yaml", "--out", str(tmp_path / "out")])
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_compare_is_a_subcommand_of_mgd_lightning(tmp_path):
    from mgd_lightning.commands.main import main

    with pytest.raises(SystemExit, match=r"^mgd-lightning compare: error: --configs 'missing\.yaml': no such file"):
        main(["compare", "--configs", "missing.yaml", "--out", str(tmp_path / "out")])


def test_configs_with_the_same_name_are_a_one_line_error(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.yaml").write_text("{}\n")
    same = [str(tmp_path / "a" / "x.yaml"), str(tmp_path / "a" / "x.yaml")]
    with pytest.raises(SystemExit, match=r"compare: error: configs must have distinct names"):
        compare.main(["--configs", *same, "--out", str(tmp_path / "out")])
