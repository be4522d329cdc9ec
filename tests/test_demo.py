"""The demo runs end to end (tiny settings, digits fallback) and writes its table and plots."""

from __future__ import annotations

import json

import pytest

from mgd_lightning.commands.demo import main


def test_demo_end_to_end_on_the_digits_fallback(tmp_path, capsys):
    main(["--out", str(tmp_path), "--digits", "--teacher-epochs", "1",
          "--student-epochs", "2", "--matching-images", "64", "--batch-size", "256"])
    out = capsys.readouterr().out
    assert "| student_mgd_amp |" in out and "sklearn digits" in out
    result = json.loads((tmp_path / "results.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == ["teacher", "student_baseline", "student_mgd_amp"]
    assert result["rows"][2]["matching_passes"] == 2 == len(result["history"])
    assert all(0.0 <= r["top1_err"] <= 100.0 for r in result["rows"])
    for plot in ("matching_cost.png", "match_changes.png"):
        assert (tmp_path / plot).stat().st_size > 1000


def test_a_root_without_fashion_mnist_is_an_error_not_the_digits(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for root, what in ((tmp_path / "nonexistent", "no such folder"), (empty, "no Fashion-MNIST IDX files there")):
        with pytest.raises(SystemExit, match=rf"demo: error: --root '{root}': {what}.*--digits") as info:
            main(["--out", str(tmp_path / "out"), "--root", str(root)])
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing ran
