"""``mgd-lightning demo --task detection`` runs end to end at a tiny size and writes its data, table and plots."""

from __future__ import annotations

import json

import pytest

from mgd_lightning.commands.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_detection_demo_end_to_end_tiny(tmp_path, capsys):
    main(["demo", "--task", "detection", "--out", str(tmp_path), "--train-images", "12", "--val-images", "6",
          "--image-size", "64", "--teacher-steps", "2", "--student-steps", "3", "--batch-size", "4",
          "--matching-every", "2", "--matching-images", "8"])
    out = capsys.readouterr().out
    assert "| model | AP | AP50 | AP75 |" in out and "| student_mgd_amp |" in out and "COCO layout" in out
    assert "anchors 16/32/64/128/256 px at P3-P7" in out  # a quarter of the 64 px side at P3
    for split in ("train2017", "val2017"):
        assert (tmp_path / "data" / "annotations" / f"instances_{split}.json").is_file()
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["teacher", "student_baseline", "student_mgd_amp"]
    assert all(0.0 <= r[k] <= 100.0 for r in result["rows"] for k in ("map", "map_50", "map_75"))
    # the step schedule: updates before steps 0 and 2 of the 3, each on 8 training images
    assert [(h["step"], h["images"]) for h in result["history"]] == [(0, 8), (2, 8)]
    assert result["rows"][2]["matching_passes"] == 2
    for plot in ("matching_cost.png", "match_changes.png"):
        assert (tmp_path / plot).stat().st_size > 1000


def test_detection_demo_argument_errors(tmp_path):
    with pytest.raises(SystemExit, match="--teacher-steps must be >= 1, got 0"):
        main(["demo", "--task", "detection", "--out", str(tmp_path), "--teacher-steps", "0"])
    with pytest.raises(SystemExit, match="--image-size must be >= 32"):
        main(["demo", "--task", "detection", "--out", str(tmp_path), "--image-size", "16"])
    with pytest.raises(SystemExit, match="--anchor-size must be >= 1, got 0"):
        main(["demo", "--task", "detection", "--out", str(tmp_path), "--anchor-size", "0"])
    with pytest.raises(SystemExit, match="--max-shapes must be >= 1, got 0"):
        main(["demo", "--task", "detection", "--out", str(tmp_path), "--max-shapes", "0"])


def test_detection_demo_anchors_follow_the_image_size():
    from mgd_lightning.commands.demo import detection_parser as parser
    from mgd_lightning.demos.detection import anchor_sizes

    assert anchor_sizes(parser().parse_args([])) == [16, 32, 64, 128, 256]  # 64 px images, shapes of 16-32 px
    assert anchor_sizes(parser().parse_args(["--image-size", "96"])) == [24, 48, 96, 192, 384]
    assert anchor_sizes(parser().parse_args(["--anchor-size", "8"])) == [8, 16, 32, 64, 128]
