"""COCODataModule on a tiny COCO-2017 tree, the synthetic shapes writer and the COCO AP helper.

Needs the `detection` extra (pycocotools, scikit-image), part of the test environment."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from mgd_lightning.data import COCODataModule, COCOFileNotFoundError, DataFileError, collate_detection
from mgd_lightning.data.base import GroupedBatchSampler, leftover_batches
from mgd_lightning.data.coco import COCO_LAYOUT, aspect_ratio_groups, read_coco_annotations
from mgd_lightning.data.shapes import SHAPE_CATEGORY_IDS, draw_shapes_image, write_shapes_coco
from mgd_lightning.metrics import (
    MAP_KEYS,
    coco_map_backend,
    detection_map_metric,
    map_log_dict,
    map_targets,
    update_detection_map,
)
from tests.coco_tree import TRAIN_IMAGES, VAL_IMAGES, expected_targets, write_coco_tree

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET_KEYS = {"boxes", "labels", "image_id", "area", "crowd_boxes", "crowd_labels", "crowd_area"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_coco_tree(tmp_path_factory.mktemp("coco"))


def _check_item(image: torch.Tensor, target: dict, sizes: dict[int, tuple[int, int]]) -> None:
    assert set(target) == TARGET_KEYS and isinstance(target["image_id"], int)
    width, height = sizes[target["image_id"]]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, height, width)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    n, k = len(target["labels"]), len(target["crowd_labels"])
    assert target["boxes"].dtype == torch.float32 and tuple(target["boxes"].shape) == (n, 4)
    assert target["labels"].dtype == torch.int64 and tuple(target["area"].shape) == (n,)
    assert tuple(target["crowd_boxes"].shape) == (k, 4) and target["crowd_labels"].dtype == torch.int64
    for boxes in (target["boxes"], target["crowd_boxes"]):
        assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
        assert bool((boxes >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all())


# ---------------------------------------------------------------------------------------------- reading
def test_items_match_the_annotations(tree):
    dm = COCODataModule(str(tree), batch_size=2)
    assert dm.num_classes == 91 and dm.input_size == (3, 224, 224)
    dm.setup()
    assert dm.categories == {1: "person", 3: "car", 18: "dog", 44: "bottle", 90: "toothbrush"}
    for split, dataset, images in (("train2017", dm.matching_dataset(), TRAIN_IMAGES),
                                   ("val2017", dm.val_dataset, VAL_IMAGES)):
        sizes = {image_id: (w, h) for image_id, w, h, _ in images}
        expected = expected_targets(split)
        assert len(dataset) == len(images)
        assert dataset.image_ids == sorted(sizes)  # sorted by id, whatever the file's order
        for index in range(len(dataset)):
            image, target = dataset[index]
            _check_item(image, target, sizes)
            want = expected[target["image_id"]]
            for key in ("boxes", "crowd_boxes"):
                assert target[key].tolist() == want[key], (split, target["image_id"], key)
            for key in ("labels", "crowd_labels"):
                assert target[key].tolist() == want[key], (split, target["image_id"], key)
    by_id = {t["image_id"]: t for _, t in (dm.matching_dataset()[i] for i in range(4))}
    # no objects: kept, empty; crowd: apart from the boxes; width 0: dropped; xywh -> xyxy
    assert by_id[25]["boxes"].shape == (0, 4) and by_id[25]["labels"].shape == (0,)
    assert by_id[30]["labels"].tolist() == [3] and by_id[30]["crowd_labels"].tolist() == [3]
    assert by_id[30]["boxes"].tolist() == [[2.0, 2.0, 14.0, 12.0]]
    assert by_id[30]["crowd_boxes"].tolist() == [[10.0, 8.0, 40.0, 28.0]]
    assert by_id[9]["boxes"].tolist() == [[4.0, 6.0, 24.0, 24.0], [30.5, 10.0, 55.5, 40.0]]
    assert by_id[9]["area"].tolist() == [360.0, 780.0]  # the annotation's (mask) area, not the box's 750
    val = {t["image_id"]: t for _, t in (dm.val_dataset[i] for i in range(3))}
    assert val[139]["boxes"].tolist()[1] == [40.0, 10.0, 60.0, 35.0]  # clamped to the 60-pixel width
    assert val[285]["boxes"].shape == (0, 4) and val[285]["crowd_boxes"].shape == (1, 4)


def test_reader_counts_and_flat_arrays(tree):
    a = read_coco_annotations(tree / "annotations" / "instances_train2017.json")
    assert a["image_ids"].tolist() == [9, 25, 30, 42] and a["dropped"] == 1
    assert a["offsets"].tolist() == [0, 2, 2, 4, 5] and a["iscrowd"].tolist() == [False, False, True, False, False]
    assert a["boxes"].dtype == np.float32 and a["labels"].dtype == np.int64 and a["file_names"].dtype.kind == "U"


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools 2.0.11, NumPy 2
def test_files_are_pycocotools_readable(tree):
    import contextlib
    import io

    from pycocotools import coco as coco_api

    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_api.COCO(str(tree / "annotations" / "instances_train2017.json"))
    crowd = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[30])) if a["iscrowd"]]
    assert len(crowd) == 1 and int(coco.annToMask(crowd[0]).sum()) == 30 * 20


def test_loaders_and_collate(tree):
    dm = COCODataModule(str(tree), batch_size=3, seed=1)
    sizes = {image_id: (w, h) for image_id, w, h, _ in TRAIN_IMAGES + VAL_IMAGES}
    assert pickle.loads(pickle.dumps(collate_detection)) is collate_detection
    for loader, n in ((dm.train_dataloader(), 4), (dm.val_dataloader(), 3), (dm.test_dataloader(), 3),
                      (dm.predict_dataloader(), 3)):
        assert loader.collate_fn is collate_detection
        seen = []
        for images, targets in loader:
            assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) <= 3
            for image, target in zip(images, targets):
                _check_item(image, target, sizes)
            seen += [t["image_id"] for t in targets]
        assert len(seen) == len(set(seen)) == n
    assert dm.test_dataloader().dataset is dm.val_dataset is dm.predict_dataloader().dataset


def test_loader_with_a_worker_process(tree):
    dm = COCODataModule(str(tree), batch_size=2, num_workers=1)
    loader = dm.val_dataloader()
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert ids == [139, 285, 632]


def test_flip_flips_image_and_boxes(tree):
    dm = COCODataModule(str(tree), batch_size=2, flip_prob=1.0)
    dm.setup()
    image, target = dm.train_dataset[0]
    plain, plain_target = dm.matching_dataset()[0]
    assert target["image_id"] == plain_target["image_id"] == 9
    assert torch.equal(image, plain.flip(-1))
    width = 64
    b = plain_target["boxes"]
    assert target["boxes"].tolist() == torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1).tolist()
    assert target["boxes"].tolist() == [[40.0, 6.0, 60.0, 24.0], [8.5, 10.0, 33.5, 40.0]]
    crowd_image, crowd_target = dm.train_dataset[2]  # image 30, 56 wide: crowd box flipped too
    assert crowd_target["crowd_boxes"].tolist() == [[16.0, 8.0, 46.0, 28.0]]
    assert torch.equal(target["labels"], plain_target["labels"])

    half = COCODataModule(str(tree), flip_prob=0.5)
    half.setup()
    torch.manual_seed(0)
    draws = [half.train_dataset[0][1]["boxes"] for _ in range(16)]
    torch.manual_seed(0)
    again = [half.train_dataset[0][1]["boxes"] for _ in range(16)]
    assert all(torch.equal(u, v) for u, v in zip(draws, again))  # seeded: reproducible
    assert len({tuple(d[0].tolist()) for d in draws}) == 2  # but random: both orientations
    assert all(torch.equal(half.matching_dataset()[0][1]["boxes"], b) for b in [plain_target["boxes"]])


def test_limits_and_skip_empty(tree):
    dm = COCODataModule(str(tree), limit_train=2, limit_val=1, seed=3)
    dm.setup()
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1
    train_ids = [dm.train_dataset[i][1]["image_id"] for i in range(2)]
    assert train_ids == [dm.matching_dataset()[i][1]["image_id"] for i in range(2)]
    skip = COCODataModule(str(tree), skip_empty_train=True)
    skip.setup()
    assert skip.train_dataset.image_ids == [9, 30, 42] and len(skip.val_dataset) == 3
    for bad in (dict(limit_train=0), dict(flip_prob=1.5), dict(batch_size=0)):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            COCODataModule(str(tree), **bad)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("missing", ["train2017", "val2017", "annotations/instances_train2017.json",
                                     "annotations/instances_val2017.json"])
def test_missing_file_is_a_one_line_error(tmp_path, missing):
    import shutil

    root = write_coco_tree(tmp_path / "coco")
    target = root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(COCOFileNotFoundError) as info:
        COCODataModule(str(root))
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and "\n" not in message
    assert str(target) in message and COCO_LAYOUT in message
    for part in ("root/train2017/", "root/val2017/", "instances_train2017.json", "instances_val2017.json"):
        assert part in message


def test_missing_root_and_missing_image(tmp_path):
    with pytest.raises(COCOFileNotFoundError, match=r"COCO root .*nowhere does not exist; expected the COCO-2017"):
        COCODataModule(str(tmp_path / "nowhere"))
    root = write_coco_tree(tmp_path / "coco")
    (root / "val2017" / "000000000285.jpg").unlink()
    dm = COCODataModule(str(root))
    dm.setup()
    with pytest.raises(COCOFileNotFoundError, match=r"000000000285\.jpg \(listed in .*instances_val2017\.json\)"):
        dm.val_dataset[1]


def _edit_json(root: Path, split: str, edit) -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("case, pattern", [
    ("truncated", r"is not a JSON file"),
    ("no_annotations", r"lacks the list 'annotations'"),
    ("category_91", r"category id 91 is outside 1\.\.90"),
    ("unknown_image", r"refers to image 12345"),
    ("unknown_category", r"has category 2, not in 'categories'"),
    ("bad_bbox", r"has bbox \[1, 2, 3\]"),
    ("no_file_name", r"lacks 'file_name'"),
])
def test_malformed_annotations_name_the_file(tmp_path, case, pattern):
    root = write_coco_tree(tmp_path / "coco")
    path = root / "annotations" / "instances_train2017.json"
    edits = {
        "no_annotations": lambda d: d.pop("annotations"),
        "category_91": lambda d: d["categories"].append({"id": 91, "name": "x"}),
        "unknown_image": lambda d: d["annotations"][0].update(image_id=12345),
        "unknown_category": lambda d: d["annotations"][0].update(category_id=2),
        "bad_bbox": lambda d: d["annotations"][0].update(bbox=[1, 2, 3]),
        "no_file_name": lambda d: d["images"][0].pop("file_name"),
    }
    if case == "truncated":
        path.write_text(path.read_text()[:100])
    else:
        _edit_json(root, "train2017", edits[case])
    dm = COCODataModule(str(root))
    with pytest.raises(DataFileError, match=pattern) as info:
        dm.setup()
    assert str(path) in str(info.value)


def test_image_of_another_size_is_an_error(tmp_path):
    root = write_coco_tree(tmp_path / "coco")
    _edit_json(root, "val2017", lambda d: d["images"][0].update(width=99))  # the file order is reversed: id 632
    dm = COCODataModule(str(root))
    dm.setup()
    with pytest.raises(DataFileError, match=r"000000000632\.jpg is 44x52 but .* says 99x52"):
        dm.val_dataset[2]


# ---------------------------------------------------------------------------------------------- shapes
def test_draw_shapes_boxes_are_tight():
    for seed in range(12):
        pixels, boxes, names = draw_shapes_image(40, 56, max_shapes=3, min_size=6, max_size=20, seed=seed)
        assert pixels.shape == (40, 56, 3) and pixels.dtype == np.uint8 and len(boxes) == len(names) >= 1
        drawn = (pixels != 255).any(-1)
        for x1, y1, x2, y2 in boxes.astype(int):
            assert 0 <= x1 < x2 <= 56 and 0 <= y1 < y2 <= 40
            inside = drawn[y1:y2, x1:x2]
            # every side of the box touches a shape pixel (shapes do not overlap, so it is this shape's)
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    empty, none, no_names = draw_shapes_image(20, 30, 3, 6, 12, seed=0, empty=True)
    assert (empty == 255).all() and none.shape == (0, 4) and no_names == []


def test_shapes_writer_layout_determinism_and_reading(tmp_path):
    root = write_shapes_coco(tmp_path / "a", n_train=8, n_val=4, image_size=(40, 56), max_size=24,
                             empty_fraction=0.3, seed=5)
    again = write_shapes_coco(tmp_path / "b", n_train=8, n_val=4, image_size=(40, 56), max_size=24,
                              empty_fraction=0.3, seed=5)
    other = write_shapes_coco(tmp_path / "c", n_train=8, n_val=4, image_size=(40, 56), max_size=24,
                              empty_fraction=0.3, seed=6)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert len(files) == 8 + 4 + 2 and Path("annotations/instances_val2017.json") in files
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert any((root / f).read_bytes() != (other / f).read_bytes() for f in files)

    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

    coco_names = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    ids = set()
    for split, n in (("train2017", 8), ("val2017", 4)):
        document = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert len(document["images"]) == n
        assert {c["id"]: c["name"] for c in document["categories"]} == {v: k for k, v in SHAPE_CATEGORY_IDS.items()}
        sizes = {im["id"]: (im["width"], im["height"]) for im in document["images"]}
        for ann in document["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
            assert ann["iscrowd"] == 0 and ann["area"] == w * h
            ids.add(ann["id"])
        assert all(40 <= w <= 56 and 40 <= h <= 56 for w, h in sizes.values())
        annotated = {ann["image_id"] for ann in document["annotations"]}
        if split == "train2017":
            assert len(annotated) < n  # some images have no shape (seed 5 draws them)
    assert all(coco_names[cid] != "N/A" for cid in SHAPE_CATEGORY_IDS.values())

    dm = COCODataModule(str(root), batch_size=4)
    images, targets = next(iter(dm.val_dataloader()))
    assert len(images) == 4 and all(image.shape[0] == 3 for image in images)
    train_labels = {int(v) for i in range(8) for v in dm.matching_dataset()[i][1]["labels"]}
    assert train_labels and train_labels <= set(SHAPE_CATEGORY_IDS.values())
    assert sum(len(dm.matching_dataset()[i][1]["labels"]) for i in range(8)) == sum(
        1 for ann in json.loads((root / "annotations/instances_train2017.json").read_text())["annotations"])


def test_shapes_writer_argument_errors(tmp_path):
    for bad, name in ((dict(n_train=-1), "n_train"), (dict(image_size=(50, 40)), "image_size"),
                      (dict(min_size=60), "min_size"), (dict(empty_fraction=2.0), "empty_fraction"),
                      (dict(max_shapes=0), "max_shapes")):
        with pytest.raises(ValueError, match=name):
            write_shapes_coco(tmp_path, **{"n_train": 1, "n_val": 1, "image_size": 48, **bad})
    all_empty = write_shapes_coco(tmp_path / "e", 3, 1, image_size=32, empty_fraction=1.0)
    assert json.loads((all_empty / "annotations/instances_train2017.json").read_text())["annotations"] == []


# ---------------------------------------------------------------------------------------------- COCO AP
def _targets() -> list[dict]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 24.0, 24.0], [30.0, 10.0, 55.0, 40.0]]), "labels": torch.tensor([1, 18]),
         "image_id": 9, "area": torch.tensor([360.0, 750.0]),
         "crowd_boxes": torch.zeros(0, 4), "crowd_labels": torch.zeros(0, dtype=torch.int64),
         "crowd_area": torch.zeros(0)},
        {"boxes": torch.tensor([[2.0, 2.0, 14.0, 12.0]]), "labels": torch.tensor([3]), "image_id": 30,
         "area": torch.tensor([120.0]), "crowd_boxes": torch.tensor([[20.0, 14.0, 50.0, 34.0]]),
         "crowd_labels": torch.tensor([3]), "crowd_area": torch.tensor([600.0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 25,
         "area": torch.zeros(0), "crowd_boxes": torch.zeros(0, 4), "crowd_labels": torch.zeros(0, dtype=torch.int64),
         "crowd_area": torch.zeros(0)},
    ]


def _perfect(targets: list[dict]) -> list[dict]:
    return [{"boxes": t["boxes"].clone(), "scores": torch.linspace(0.9, 0.8, len(t["labels"])),
             "labels": t["labels"].clone()} for t in targets]


def _map(detections, targets) -> dict[str, float]:
    metric = detection_map_metric()
    update_detection_map(metric, detections, targets)
    return {k: float(v) for k, v in map_log_dict(metric.compute()).items()}


def test_map_perfect_and_wrong_predictions():
    targets = _targets()
    perfect = _map(_perfect(targets), targets)
    assert set(perfect) == {f"val/{k}" for k in MAP_KEYS}
    assert perfect["val/map"] == perfect["val/map_50"] == perfect["val/map_75"] == pytest.approx(1.0)
    assert perfect["val/map_small"] == pytest.approx(1.0)  # all three boxes are under 32^2 = 1024 px

    wrong_labels = _perfect(targets)
    for det in wrong_labels:
        det["labels"] = torch.full_like(det["labels"], 44)
    assert _map(wrong_labels, targets)["val/map"] == pytest.approx(0.0)

    shifted = _perfect(targets)  # IoU between 0.5 and 0.75: counts at AP50 only
    for det in shifted:
        w = det["boxes"][:, 2] - det["boxes"][:, 0]
        det["boxes"] = det["boxes"] + torch.stack([w, 0 * w, w, 0 * w], 1) * 0.2
    result = _map(shifted, targets)
    assert result["val/map_50"] == pytest.approx(1.0) and result["val/map_75"] == pytest.approx(0.0)
    assert 0.0 < result["val/map"] < 1.0


def test_map_crowd_regions_are_ignored():
    targets = _targets()
    on_crowd = _perfect(targets)
    on_crowd[1] = {"boxes": torch.cat([on_crowd[1]["boxes"], torch.tensor([[22.0, 15.0, 48.0, 33.0]])]),
                   "scores": torch.tensor([0.7, 0.95]), "labels": torch.tensor([3, 3])}
    assert _map(on_crowd, targets)["val/map"] == pytest.approx(1.0)  # a detection on a crowd: not a false positive
    no_crowd = [{k: v for k, v in t.items() if not k.startswith("crowd")} for t in targets]
    assert _map(on_crowd, no_crowd)["val/map"] < 1.0  # the same detection without the crowd box: a false positive
    converted = map_targets(targets)[1]
    assert converted["iscrowd"].tolist() == [0, 1] and converted["area"].tolist() == [120.0, 600.0]


def test_map_helper_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        coco_map_backend("cocoapi")
    with pytest.raises(KeyError, match=r"lack \['map_small'"):
        map_log_dict({"map": 1.0, "map_50": 1.0, "map_75": 1.0, "map_medium": 1.0, "map_large": 1.0})
    with pytest.raises(ValueError, match="2 detections but 3 targets"):
        update_detection_map(None, _perfect(_targets())[:2], _targets())


# ---------------------------------------------------------------------------------------------- aspect-ratio groups
def test_grouped_batch_sampler_as_detectron2_on_a_known_order():
    """Detectron2's AspectRatioGroupedDataset: an index joins its group's bucket, a full bucket is a batch. The
    part-filled buckets at the end: each its own batch when that keeps ceil(n / batch_size) batches, else joined."""
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0, 1]
    order = SequentialSampler(range(10))
    assert list(GroupedBatchSampler(order, 3, False, groups)) == [[0, 2, 3], [1, 4, 5], [6, 8], [7, 9]]
    assert len(GroupedBatchSampler(order, 3, False, groups)) == 4
    assert list(GroupedBatchSampler(order, 3, True, groups)) == [[0, 2, 3], [1, 4, 5], [6, 8, 7]]
    assert len(GroupedBatchSampler(order, 3, True, groups)) == 3
    assert list(GroupedBatchSampler(order, 4, False, groups)) == [[0, 2, 3, 6], [1, 4, 5, 7], [8, 9]]
    assert leftover_batches([[1, 2], [3]], 4, drop_last=True) == []
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        GroupedBatchSampler(order, 0, False, groups)
    with pytest.raises(ValueError, match="needs group_ids"):
        GroupedBatchSampler(order, 2)


@pytest.mark.parametrize("n, batch_size", [(1, 2), (7, 2), (50, 4), (61, 16)])
def test_grouped_batches_cover_each_index_once(n, batch_size):
    groups = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    sampler = GroupedBatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(1)), batch_size,
                                  False, groups)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-n // batch_size)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(len(b) <= batch_size for b in batches)
    assert sum(len({groups[i] for i in b}) > 1 for b in batches) <= 1  # at most one mixed batch, at the end


def test_coco_training_batches_are_grouped_by_aspect_ratio(tree):
    """Training images 9 (64x48) and 30 (56x40) are landscape, 25 (40x56) and 42 (48x48) not: batches of 2 never
    mix them, whatever the shuffle; group_aspect_ratio=False gives plain shuffled batches; evaluation is not grouped."""
    dm = COCODataModule(str(tree), batch_size=2)
    dm.setup()
    assert aspect_ratio_groups(dm.train_dataset).tolist() == [0, 1, 0, 1]  # ids 9, 25, 30, 42
    landscape = {9: True, 25: False, 30: True, 42: False}
    pairs = set()
    for seed in range(6):
        torch.manual_seed(seed)
        for _, targets in dm.train_dataloader():
            ids = tuple(sorted(t["image_id"] for t in targets))
            assert len(ids) == 2 and len({landscape[i] for i in ids}) == 1
            pairs.add(ids)
    assert pairs == {(9, 30), (25, 42)}
    assert dm.val_dataloader().batch_size == 2

    plain = COCODataModule(str(tree), batch_size=2, group_aspect_ratio=False)
    mixed = set()
    for seed in range(6):
        torch.manual_seed(seed)
        mixed |= {tuple(sorted(t["image_id"] for t in targets)) for _, targets in plain.train_dataloader()}
    assert mixed - {(9, 30), (25, 42)}  # some plain batch mixes the two shapes
    subset = COCODataModule(str(tree), batch_size=2, limit_train=3, seed=0)
    subset.setup()
    ids = [subset.train_dataset[i][1]["image_id"] for i in range(3)]
    assert aspect_ratio_groups(subset.train_dataset).tolist() == [0 if landscape[i] else 1 for i in ids]


def test_grouped_loader_takes_lightnings_distributed_sampler(tree):
    """Under DDP Lightning rebuilds the training loader around a DistributedSampler (the same call as in its
    data connector): the grouped batch sampler is rebuilt with it, each rank gets its half, still grouped."""
    import importlib

    from torch.utils.data import BatchSampler, DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from mgd_lightning._lightning import pl

    connector = importlib.import_module(f"{pl.__name__}.trainer.connectors.data_connector")
    replaced, update = connector._replace_dunder_methods, connector._update_dataloader
    dm = COCODataModule(str(tree), batch_size=2)
    with replaced(DataLoader, "dataset"), replaced(BatchSampler):  # as the connector requests a loader
        loader = dm.train_dataloader()
    landscape = {9: True, 25: False, 30: True, 42: False}
    seen = []
    for rank in range(2):
        ddp = update(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False))
        assert isinstance(ddp.batch_sampler, GroupedBatchSampler) and len(ddp) == 1
        for _, targets in ddp:
            ids = [t["image_id"] for t in targets]
            seen += ids
            assert len(ids) == 1 or len({landscape[i] for i in ids}) == 1
    assert sorted(seen) == [9, 25, 30, 42]


def test_batch_trains_and_evaluates_a_torchvision_retinanet(tree):
    """The batch contract end to end: a torchvision COCO RetinaNet (random init) takes the batches as they come
    (empty targets and the extra keys included) for its loss, and its detections go into the AP helper."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=64, max_size=96)
    dm = COCODataModule(str(tree), batch_size=4)
    images, targets = next(iter(dm.train_dataloader()))
    assert any(len(t["labels"]) == 0 for t in targets)
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"} and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    metric = detection_map_metric()
    with torch.no_grad():
        for images, targets in dm.val_dataloader():
            update_detection_map(metric, model(images), targets)
    result = map_log_dict(metric.compute())
    assert all(-1.0 <= float(v) <= 1.0 for v in result.values())


# ---------------------------------------------------------------------------------------------- masks
def test_masks_for_mask_rcnn(tree, tmp_path):
    dm = COCODataModule(str(tree), batch_size=4, masks=True, flip_prob=1.0)
    dm.setup()
    by_id = {t["image_id"]: (image, t) for image, t in (dm.matching_dataset()[i] for i in range(4))}
    for image, target in by_id.values():
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and tuple(masks.shape) == (len(target["labels"]), *image.shape[1:])
        for mask, (x1, y1, x2, y2) in zip(masks, target["boxes"].round().int().tolist()):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert abs(int(xs.min()) - x1) <= 1 and abs(int(xs.max()) + 1 - x2) <= 1
            assert abs(int(ys.min()) - y1) <= 1 and abs(int(ys.max()) + 1 - y2) <= 1
    assert by_id[25][1]["masks"].shape == (0, 56, 40) and by_id[30][1]["masks"].shape == (1, 40, 56)
    flipped_image, flipped = dm.train_dataset[0]
    assert torch.equal(flipped["masks"], by_id[9][1]["masks"].flip(-1))

    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=64, max_size=96)
    images, targets = next(iter(dm.train_dataloader()))
    losses = model.train()(images, targets)
    assert "loss_mask" in losses and all(torch.isfinite(v) for v in losses.values())

    shapes = write_shapes_coco(tmp_path / "shapes", 2, 1, image_size=48, empty_fraction=0.0)
    no_segmentation = COCODataModule(str(shapes), masks=True)
    no_segmentation.setup()
    with pytest.raises(DataFileError, match="has no segmentation; masks=True"):
        no_segmentation.matching_dataset()[0]
