"""Data modules: each test writes tiny data in the real on-disk formats (CUB_200_2011 archive, train/valid and
ImageNet image folders, torchvision's cifar-100-python pickles, gzipped IDX files) and loads it back."""

from __future__ import annotations

import gzip
import inspect
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from mgd_lightning._lightning import pl
from mgd_lightning.data import (
    DATAMODULES,
    CIFAR100DataModule,
    CUB200DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    ImageNetDataModule,
    find_fashion_mnist,
    read_idx,
)
from mgd_lightning.data.transforms import TRAIN_CROPS, cifar_transforms, grey_transforms, imagenet_transforms

SMALL = dict(image_size=32, resize_size=40)  # ImageNet-style pipeline at test size


# ---------------------------------------------------------------------------------------------- writers
def _jpeg(path: Path, seed: int, size: tuple[int, int] = (52, 44)) -> None:
    """A noise image, so that crops and flips change the tensor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _make_cub(parent: Path, num_classes: int = 3, per_class: int = 4) -> Path:
    """``parent/CUB_200_2011`` in the official layout; the first half of each class is training data."""
    root = parent / "CUB_200_2011"
    images, labels, split, classes = [], [], [], []
    image_id = 0
    for c in range(1, num_classes + 1):
        class_dir = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {class_dir}")
        for k in range(per_class):
            image_id += 1
            rel = f"{class_dir}/Bird_{c}_{k:04d}_{image_id}.jpg"
            _jpeg(root / "images" / rel, seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(k < per_class // 2)}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", classes)):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def _make_folders(root: Path, splits: dict[str, int], classes=("cat", "dog", "eel"), seed: int = 0) -> Path:
    """ImageFolder trees ``root/<split>/<class>/<i>.jpg`` with ``splits[split]`` images per class."""
    for split, n in splits.items():
        for c, name in enumerate(classes):
            for i in range(n):
                _jpeg(root / split / name / f"{i}.jpg", seed=seed + 1000 * c + i + 100 * len(split))
    return root


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING opcodes), as the cPickle files of the
    CIFAR archive hold them: they load as ``str`` with ``encoding="latin1"`` (torchvision) and as ``bytes`` with
    ``encoding="bytes"`` (the data set's own snippet), numpy arrays included."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(header + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _make_cifar(root: Path, n_train: int = 20, n_test: int = 10, py2: bool = True) -> Path:
    """torchvision's ``cifar-100-python/{train,test,meta}`` pickles: Python 2 ``str`` keys as in the real
    archive (``py2=True``), or ``bytes`` keys as a Python 3 re-pickle would have them."""
    directory = root / "cifar-100-python"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(obj: dict, path: Path) -> None:
        with open(path, "wb") as f:
            if py2:
                _Py2Pickler(f, protocol=2).dump(obj)
            else:
                pickle.dump(obj, f)

    for name, n in (("train", n_train), ("test", n_test)):
        dump({
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{name} batch".encode(),
            b"fine_labels": [int(x) for x in rng.integers(0, 100, n)],
            b"coarse_labels": [int(x) for x in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }, directory / name)
    dump({b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
          b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}, directory / "meta")
    return root


def _write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _make_fashion(directory: Path, n_train: int = 30, n_test: int = 12, gz: bool = True) -> Path:
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))
    return directory


# ---------------------------------------------------------------------------------------------- checks
def _check_batches(dm: ImageDataModule, n_train: int, n_val: int) -> None:
    """Loader contract (the loaders set the data module up when needed): shapes, dtypes, labels, sizes."""
    loaders = (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader())
    assert len(dm.train_dataset) == n_train and len(dm.val_dataset) == n_val
    assert len(dm.matching_dataset()) == n_train
    for loader in loaders:
        seen = 0
        for x, y in loader:
            assert x.dtype == torch.float32 and tuple(x.shape[1:]) == dm.input_size
            assert y.dtype == torch.int64 and x.shape[0] == y.shape[0] <= dm.batch_size
            assert 0 <= int(y.min()) and int(y.max()) < dm.num_classes
            seen += len(y)
        assert seen == len(loader.dataset)
    assert dm.test_dataloader().dataset is dm.val_dataset is dm.predict_dataloader().dataset
    assert not dm.pin_memory or torch.cuda.is_available()


def _check_matching_vs_train(dm: ImageDataModule, index: int = 0) -> None:
    """matching_dataset() is deterministic and equals the eval transform; the training set is augmented."""
    a, la = dm.matching_dataset()[index]
    b, lb = dm.matching_dataset()[index]
    assert torch.equal(a, b) and la == lb
    torch.manual_seed(0)
    draws = [dm.train_dataset[index][0] for _ in range(8)]
    torch.manual_seed(0)
    again = [dm.train_dataset[index][0] for _ in range(8)]
    assert all(torch.equal(u, v) for u, v in zip(draws, again))  # seeded: reproducible
    assert any(not torch.equal(d, draws[0]) for d in draws[1:])  # but random
    assert dm.train_dataset[index][1] == la
    assert draws[0].shape == a.shape


# ---------------------------------------------------------------------------------------------- transforms
def test_cifar_training_crop_is_ofds_reflect_pad():
    """OFD's CIFAR-100 crop: Pad(1, reflect) of [[a, b], [c, d]] is [[d, c, d, c], [b, a, b, a], [d, c, d, c],
    [b, a, b, a]]; every training output is one of its 2 x 2 crops (or the crop's mirror), normalised by OFD's
    mean / std, and the corner crop (reflected values, never zeros) occurs. recipe="zero_pad" pads with zeros."""
    a, b, c, d = 10, 60, 120, 250
    image = torch.tensor([[a, b], [c, d]], dtype=torch.uint8).expand(3, 2, 2).contiguous()
    padded = torch.tensor([[d, c, d, c], [b, a, b, a], [d, c, d, c], [b, a, b, a]], dtype=torch.float32) / 255
    mean = torch.tensor([125.3, 123.0, 113.9])[:, None, None] / 255
    std = torch.tensor([63.0, 62.1, 66.7])[:, None, None] / 255
    crops = [padded[i:i + 2, j:j + 2] for i in range(3) for j in range(3)]
    candidates = [(crop.expand(3, 2, 2) - mean) / std for crop in crops + [crop.flip(-1) for crop in crops]]
    corner = candidates[0]  # rows 0-1, columns 0-1: [[d, c], [b, a]]
    assert torch.allclose(corner[0], (torch.tensor([[d, c], [b, a]]) / 255 - mean[0]) / std[0])
    ofd = cifar_transforms(True, image_size=2, padding=1)
    torch.manual_seed(0)
    outputs = [ofd(image) for _ in range(200)]
    assert all(any(torch.allclose(out, cand, atol=1e-6) for cand in candidates) for out in outputs)
    assert any(torch.allclose(out, corner, atol=1e-6) for out in outputs)
    assert torch.allclose(cifar_transforms(False, image_size=2)(image), (image.float() / 255 - mean) / std, atol=1e-6)

    zero = cifar_transforms(True, image_size=2, padding=1, recipe="zero_pad")
    zero_mean = torch.tensor([0.5071, 0.4865, 0.4409])[:, None, None]
    zero_std = torch.tensor([0.2673, 0.2564, 0.2762])[:, None, None]
    assert any(torch.allclose(zero(image)[:, 0, 0], (-zero_mean / zero_std)[:, 0, 0]) for _ in range(200))
    with pytest.raises(ValueError, match="recipe must be one of.*'mirror'"):
        cifar_transforms(True, recipe="mirror")


def test_transforms_shapes_and_flip():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    ev = imagenet_transforms(False, **SMALL)(img)
    assert ev.shape == (3, 32, 32) and ev.dtype == torch.float32
    assert torch.equal(ev, imagenet_transforms(False, **SMALL)(img))
    with pytest.raises(ValueError, match="resize_size"):
        imagenet_transforms(True, image_size=64, resize_size=40)
    grey = grey_transforms(False, 8, (0.5,), (0.5,), channels=3)(torch.full((1, 8, 8), 255, dtype=torch.uint8))
    assert grey.shape == (3, 8, 8) and torch.allclose(grey, torch.ones(3, 8, 8))


def _steps(pipeline: T.Compose) -> list[type]:
    return [type(t) for t in pipeline.transforms]


def _is_window_of(x: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether ``x`` (C, h, w) is a window of ``full`` (C, H, W) or of its horizontal mirror."""
    h, w = x.shape[1:]
    return any(
        torch.allclose(x, image[:, i : i + h, j : j + w], atol=1e-5)
        for image in (full, full.flip(-1))
        for i in range(full.shape[1] - h + 1)
        for j in range(full.shape[2] - w + 1)
    )


def test_imagenet_training_crops():
    """Default: the reference code's RandomResizedCrop + flip; ``resize_random``: the paper's Resize + RandomCrop;
    evaluation: Resize + CenterCrop either way."""
    assert TRAIN_CROPS == ("random_resized", "resize_random")
    default = imagenet_transforms(True, **SMALL)
    assert _steps(default)[:2] == [T.RandomResizedCrop, T.RandomHorizontalFlip]
    crop = default.transforms[0]
    assert crop.size == (32, 32) and crop.scale == (0.08, 1.0)  # torchvision's defaults, as the reference code
    paper = imagenet_transforms(True, **SMALL, train_crop="resize_random")
    assert _steps(paper)[:3] == [T.Resize, T.RandomCrop, T.RandomHorizontalFlip] and paper.transforms[0].size == 40
    for train_crop in TRAIN_CROPS:
        ev = imagenet_transforms(False, **SMALL, train_crop=train_crop)
        assert _steps(ev)[:2] == [T.Resize, T.CenterCrop]
        assert (ev.transforms[0].size, ev.transforms[1].size) == (40, (32, 32))
    with pytest.raises(ValueError, match="train_crop must be one of"):
        imagenet_transforms(True, **SMALL, train_crop="center")

    # behaviour: a resize_random crop is always a 32 px window of the 40 px resize (or of its mirror); a
    # RandomResizedCrop rescales a random region, so its crops are in general not such windows.
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (44, 52, 3), dtype=np.uint8))
    resized = T.Compose(imagenet_transforms(False, **SMALL).transforms[:1] + paper.transforms[3:])(img)
    assert resized.shape == (3, 40, 47)
    torch.manual_seed(0)
    assert all(_is_window_of(paper(img), resized) for _ in range(6))
    draws = [default(img) for _ in range(6)]
    assert all(d.shape == (3, 32, 32) for d in draws)
    assert not all(_is_window_of(d, resized) for d in draws)


@pytest.mark.parametrize("module", ["cub200", "imagenet"])
def test_training_crop_of_the_data_modules(tmp_path, module):
    """The data modules train with RandomResizedCrop by default; ``train_crop="resize_random"`` selects the
    paper's Resize + RandomCrop; the evaluation and matching sets keep Resize + CenterCrop."""
    if module == "cub200":
        root, cls = _make_cub(tmp_path), CUB200DataModule
    else:
        root, cls = _make_folders(tmp_path, {"train": 2, "val": 1}), ImageNetDataModule
    default = cls(str(root), **SMALL)
    assert default.train_crop == "random_resized" and default.hparams.train_crop == "random_resized"
    default.setup()
    assert _steps(default.train_dataset.transform)[:2] == [T.RandomResizedCrop, T.RandomHorizontalFlip]
    for dataset in (default.val_dataset, default.matching_dataset()):
        assert _steps(dataset.transform)[:2] == [T.Resize, T.CenterCrop]
    paper = cls(str(root), **SMALL, train_crop="resize_random")
    paper.setup()
    assert _steps(paper.train_dataset.transform)[:3] == [T.Resize, T.RandomCrop, T.RandomHorizontalFlip]
    assert _steps(paper.matching_dataset().transform)[:2] == [T.Resize, T.CenterCrop]
    _check_matching_vs_train(paper)
    with pytest.raises(ValueError, match="train_crop must be one of"):
        cls(str(root), **SMALL, train_crop="random")


# ---------------------------------------------------------------------------------------------- CUB-200
@pytest.mark.parametrize("at", ["parent", "archive"])
def test_cub_official_layout(tmp_path, at):
    archive = _make_cub(tmp_path)
    dm = CUB200DataModule(str(tmp_path if at == "parent" else archive), batch_size=4, **SMALL)
    assert dm.layout == "official" and dm.data_dir == archive
    assert dm.num_classes == 3 and dm.classes == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    assert dm.input_size == (3, 32, 32)
    dm.setup("fit")
    _check_batches(dm, n_train=6, n_val=6)
    assert [y for _, y in dm.train_dataset.samples] == [0, 0, 1, 1, 2, 2]
    _check_matching_vs_train(dm)
    # the matching set is the training images with the eval transform
    path, _ = dm.train_dataset.samples[0]
    with Image.open(path) as img:
        expected = imagenet_transforms(False, **SMALL)(img.convert("RGB"))
    assert torch.equal(dm.matching_dataset()[0][0], expected)


def test_cub_train_valid_folders(tmp_path):
    _make_folders(tmp_path, {"train": 3, "valid": 2})
    dm = CUB200DataModule(str(tmp_path), batch_size=4, **SMALL)
    assert dm.layout == "folders" and dm.num_classes == 3 and dm.classes == ["cat", "dog", "eel"]
    _check_batches(dm, n_train=9, n_val=6)
    _check_matching_vs_train(dm, index=4)


def test_cub_valid_with_unknown_class_is_rejected(tmp_path):
    _make_folders(tmp_path, {"train": 1, "valid": 1})
    _jpeg(tmp_path / "valid" / "zebra" / "0.jpg", seed=5)
    with pytest.raises(ValueError, match=r"valid has 1 class folder\(s\) that .*train lacks: zebra"):
        CUB200DataModule(str(tmp_path))


def _layout_listed(message: str) -> None:
    for expected in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
                     "images/<class_dir>/<file>.jpg", "train/<class>/*.jpg", "valid/<class>/*.jpg"):
        assert expected in message


def test_cub_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        CUB200DataModule(str(tmp_path / "nowhere"))
    assert "does not exist" in str(err.value) and str(tmp_path / "nowhere") in str(err.value)
    _layout_listed(str(err.value))


def test_cub_missing_images_txt(tmp_path):
    archive = _make_cub(tmp_path)
    (archive / "images.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete CUB_200_2011 archive .*missing images\.txt") as err:
        CUB200DataModule(str(tmp_path))
    _layout_listed(str(err.value))


def test_cub_unknown_layout(tmp_path):
    (tmp_path / "readme.md").write_text("hello")
    (tmp_path / "birds").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no CUB-200 layout found .*it holds: birds, readme\.md") as err:
        CUB200DataModule(str(tmp_path))
    _layout_listed(str(err.value))


def test_cub_half_folder_layout(tmp_path):
    _make_folders(tmp_path, {"train": 1})
    with pytest.raises(FileNotFoundError, match=r"incomplete train/valid layout .*missing valid/"):
        CUB200DataModule(str(tmp_path))


def test_cub_malformed_files(tmp_path):
    archive = _make_cub(tmp_path)
    labels = (archive / "image_class_labels.txt").read_text()
    (archive / "image_class_labels.txt").write_text(labels.replace("1 1\n", "1 7\n", 1))
    with pytest.raises(ValueError, match=r"image 1 has class id '7', expected an integer in 1\.\.3"):
        CUB200DataModule(str(archive))
    (archive / "image_class_labels.txt").write_text(labels + "oops\n")
    with pytest.raises(ValueError, match=r"line 13: expected '<id> <class id>', got 'oops'"):
        CUB200DataModule(str(archive))
    (archive / "image_class_labels.txt").write_text(labels + "99 1\n")
    with pytest.raises(ValueError, match=r"does not list the image ids of images\.txt: 0 missing .*1 unknown"):
        CUB200DataModule(str(archive))
    (archive / "image_class_labels.txt").write_text(labels)
    (archive / "train_test_split.txt").write_text("".join(f"{i} 0\n" for i in range(1, 13)))
    with pytest.raises(ValueError, match="marks no training images"):
        CUB200DataModule(str(archive))


def test_cub_listed_image_missing_on_disk(tmp_path):
    archive = _make_cub(tmp_path)
    next((archive / "images").rglob("*.jpg")).unlink()
    dm = CUB200DataModule(str(archive), **SMALL)  # the txt files are fine
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in .*images\.txt are missing"):
        dm.setup()


# ---------------------------------------------------------------------------------------------- ImageNet
def test_imagenet_folders(tmp_path):
    wnids = ("n01440764", "n01443537")
    _make_folders(tmp_path, {"train": 3, "val": 2}, classes=wnids)
    dm = ImageNetDataModule(str(tmp_path), batch_size=4, **SMALL)
    assert dm.num_classes == 2 and dm.classes == list(wnids) and dm.input_size == (3, 32, 32)
    _check_batches(dm, n_train=6, n_val=4)
    _check_matching_vs_train(dm)


def test_imagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)ImageNet root .*nowhere does not exist.*train/<wnid>/\*\.JPEG"):
        ImageNetDataModule(str(tmp_path / "nowhere"))
    _make_folders(tmp_path, {"train": 1}, classes=("n1",))
    with pytest.raises(FileNotFoundError, match=r"(?s)lacks val/;.*val/<wnid>/\*\.JPEG"):
        ImageNetDataModule(str(tmp_path))
    _jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", seed=1)
    with pytest.raises(ValueError, match=r"holds images directly: sort them into val/<wnid>/"):
        ImageNetDataModule(str(tmp_path))
    empty = tmp_path / "empty"
    (empty / "train" / "n1").mkdir(parents=True)
    (empty / "val" / "n1").mkdir(parents=True)
    dm = ImageNetDataModule(str(empty))
    with pytest.raises(FileNotFoundError, match=r"no image files .* under .*train/<class>/"):
        dm.setup()


# ---------------------------------------------------------------------------------------------- CIFAR-100
def test_cifar100(tmp_path):
    _make_cifar(tmp_path, py2=True)
    dm = CIFAR100DataModule(str(tmp_path), batch_size=8)
    assert dm.num_classes == 100 and dm.input_size == (3, 32, 32)
    _check_batches(dm, n_train=20, n_val=10)
    _check_matching_vs_train(dm)
    assert dm.classes[:2] == ["fine_0", "fine_1"]
    # channel planes: row = 1024 R, 1024 G, 1024 B values; the eval transform only normalises
    with open(tmp_path / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")  # the data set's own loading snippet
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (20, 3072)
    # OFD's normalisation (CIFAR-100/train_with_distillation.py); recipe="zero_pad": the CIFAR-100 statistics
    image = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)).float() / 255
    for recipe, mean, std in (("ofd", [125.3 / 255, 123.0 / 255, 113.9 / 255], [63.0 / 255, 62.1 / 255, 66.7 / 255]),
                              ("zero_pad", [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])):
        mean, std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
        x, y = CIFAR100DataModule(str(tmp_path), recipe=recipe).matching_dataset()[0]
        assert torch.allclose(x, (image - mean) / std, atol=1e-6) and y == raw[b"fine_labels"][0]
    with pytest.raises(ValueError, match="recipe must be one of.*'reflect'"):
        CIFAR100DataModule(str(tmp_path), recipe="reflect")
    # root may also be the cifar-100-python folder itself
    assert len(CIFAR100DataModule(str(tmp_path / "cifar-100-python")).matching_dataset()) == 20


def test_cifar100_files_are_torchvision_format(tmp_path):
    """The files the tests write are what torchvision's CIFAR100 reads (its MD5 check switched off)."""
    from torchvision.datasets import CIFAR100

    class UncheckedCIFAR100(CIFAR100):
        train_list = [["train", None]]
        test_list = [["test", None]]
        meta = {**CIFAR100.meta, "md5": None}

    _make_cifar(tmp_path)
    tv = UncheckedCIFAR100(str(tmp_path), train=True)
    dm = CIFAR100DataModule(str(tmp_path))
    dm.setup()
    assert torch.equal(dm.train_dataset.images.permute(0, 2, 3, 1), torch.from_numpy(tv.data))
    assert dm.train_dataset.labels.tolist() == tv.targets and dm.classes == tv.classes


def test_cifar100_python3_repickled_bytes_keys(tmp_path):
    _make_cifar(tmp_path, n_train=6, n_test=4, py2=False)
    dm = CIFAR100DataModule(str(tmp_path), batch_size=4)
    _check_batches(dm, n_train=6, n_val=4)
    assert dm.classes[99] == "fine_99"


def test_cifar100_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected the pickles .*cifar-100-python/\{train,test,meta\}") as err:
        CIFAR100DataModule(str(tmp_path))
    assert str(tmp_path / "cifar-100-python") in str(err.value) and "download=True" in str(err.value)
    _make_cifar(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="missing: meta"):
        CIFAR100DataModule(str(tmp_path))
    # download=True defers the check to prepare_data/setup (no network is used here)
    assert CIFAR100DataModule(str(tmp_path / "later"), download=True).num_classes == 100


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
def test_read_idx_round_trip_and_errors(tmp_path):
    from torchvision.datasets.mnist import read_image_file

    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "a-idx3-ubyte", images)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", images)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), images)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), images)
    assert np.array_equal(read_image_file(str(tmp_path / "a-idx3-ubyte")).numpy(), images)  # torchvision agrees
    ints = np.array([[1, -2, 70000]], dtype=np.int32)
    _write_idx(tmp_path / "i.idx", ints)
    out = read_idx(tmp_path / "i.idx")
    assert np.array_equal(out, ints) and out.dtype.isnative
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "a-idx3-ubyte").read_bytes()[:-3])
    with pytest.raises(ValueError, match="IDX header says"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_debian_layout(tmp_path):
    deb = _make_fashion(tmp_path / "share" / "fashion-mnist")
    assert find_fashion_mnist([str(tmp_path / "elsewhere"), str(deb)]) == deb
    dm = FashionMNISTDataModule(search_paths=[str(deb)], batch_size=8)
    assert dm.data_dir == deb and dm.num_classes == 10 and dm.input_size == (1, 28, 28)
    _check_batches(dm, n_train=30, n_val=12)
    _check_matching_vs_train(dm)
    dm3 = FashionMNISTDataModule(search_paths=[str(deb)], channels=3, augment=False, limit_train=7, limit_val=5)
    assert dm3.input_size == (3, 28, 28)
    _check_batches(dm3, n_train=7, n_val=5)
    x, _ = dm3.train_dataset[0]
    assert torch.equal(x, dm3.matching_dataset()[0][0])  # augment=False: train = eval transform
    assert torch.equal(x[0], x[2])
    # the subsample is a fixed seeded permutation: same images each time, not simply the first 7
    again = FashionMNISTDataModule(search_paths=[str(deb)], limit_train=7)
    again.setup()
    assert dm3.train_dataset.indices == again.train_dataset.indices != list(range(7))


def test_fashion_mnist_torchvision_root_and_order(tmp_path):
    tv_raw = _make_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", n_train=20, n_test=10, gz=False)
    deb = _make_fashion(tmp_path / "deb", n_train=30, n_test=12)
    dm = FashionMNISTDataModule(root=str(tmp_path / "tv"), search_paths=[])
    assert dm.data_dir == tv_raw
    _check_batches(dm, n_train=20, n_val=10)
    explicit = FashionMNISTDataModule(root=str(tmp_path / "tv"), search_paths=[str(deb)])  # a root: only there
    assert explicit.data_dir == tv_raw
    assert FashionMNISTDataModule(search_paths=[str(deb)]).data_dir == deb  # no root: search_paths
    assert find_fashion_mnist([str(tmp_path / "tv")]) == tv_raw


def test_fashion_mnist_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        FashionMNISTDataModule(search_paths=[str(tmp_path / "deb")])
    message = str(err.value)
    for expected in ("apt-get install dataset-fashion-mnist", str(tmp_path / "deb"), "train-images-idx3-ubyte[.gz]",
                     "t10k-labels-idx1-ubyte[.gz]", "download=True"):
        assert expected in message
    with pytest.raises(FileNotFoundError) as err:  # an explicit root must hold the files (tests/test_no_silent_errors)
        FashionMNISTDataModule(root=str(tmp_path / "r"), search_paths=[str(tmp_path / "deb")])
    message = str(err.value)
    for expected in (f"root={str(tmp_path / 'r')!r}", str(tmp_path / "r" / "FashionMNIST" / "raw"),
                     "train-images-idx3-ubyte[.gz]", "download=True"):
        assert expected in message
    assert find_fashion_mnist([str(tmp_path)]) is None
    with pytest.raises(ValueError, match="download=True needs a root"):
        FashionMNISTDataModule(download=True, search_paths=[])


_DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not _DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_real_debian_files():
    assert find_fashion_mnist() == _DEBIAN_FASHION
    dm = FashionMNISTDataModule(batch_size=256)
    dm.setup()
    assert len(dm.train_dataset) == 60000 and len(dm.val_dataset) == 10000
    for ds in (dm.train_dataset, dm.val_dataset):
        assert ds.labels.min() == 0 and ds.labels.max() == 9 and ds.images.shape[1:] == (1, 28, 28)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (256, 1, 28, 28) and y.max() < 10


# ---------------------------------------------------------------------------------------------- digits
def test_digits():
    dm = DigitsDataModule(batch_size=128, size=16)
    assert dm.num_classes == 10 and dm.input_size == (1, 16, 16)
    _check_batches(dm, n_train=1437, n_val=360)
    _check_matching_vs_train(dm)
    # the split is fixed by the seed and stratified
    other = DigitsDataModule(size=16)
    other.setup()
    assert torch.equal(other.val_dataset.images, dm.val_dataset.images)
    assert torch.bincount(dm.val_dataset.labels).min() >= 35
    dm3 = DigitsDataModule(size=8, channels=3, augment=False, val_fraction=0.5)
    assert dm3.input_size == (3, 8, 8)
    _check_batches(dm3, n_train=898, n_val=899)
    assert torch.equal(dm3.train_dataset[3][0], dm3.matching_dataset()[3][0])


# ---------------------------------------------------------------------------------------------- CLI / contract
def _yaml_example(cls: type) -> str:
    match = re.search(r"```yaml\n(.*?)```", inspect.getdoc(cls) or "", re.S)
    assert match, f"{cls.__name__} docstring lacks a ```yaml example"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(DATAMODULES))
def test_registry_signatures_and_yaml_examples(name):
    from jsonargparse import ArgumentParser

    cls = DATAMODULES[name]
    assert issubclass(cls, ImageDataModule) and cls.__module__.startswith("mgd_lightning.data.")
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params[:3]] == ["root", "batch_size", "num_workers"]
    assert all(p.annotation is not inspect.Parameter.empty for p in params)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    cfg = parser.parse_string(_yaml_example(cls))
    assert cfg.data.class_path == f"mgd_lightning.data.{cls.__name__}"
    if cls is DigitsDataModule:  # the only one whose data is always here
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
        dm = instantiate(cfg).data
        assert isinstance(dm, DigitsDataModule) and dm.input_size == (3, 16, 16)


def test_datasets_pickle_for_worker_processes():
    dm = DigitsDataModule(channels=3)
    dm.setup()
    for ds in (dm.train_dataset, dm.val_dataset, dm.matching_dataset()):
        clone = pickle.loads(pickle.dumps(ds))
        torch.manual_seed(3)
        x = ds[5][0]
        torch.manual_seed(3)
        assert torch.equal(clone[5][0], x)


def test_digits_with_distillation_trainer(tmp_path):
    """End to end: the matching callback takes its pass over matching_dataset() of the data module."""
    from mgd_lightning import DistillationModule, MGDMatchingCallback
    from tests.toys import ToyNet

    dm = DigitsDataModule(batch_size=64, size=16, channels=3)
    calls = []
    original = dm.matching_dataset
    dm.matching_dataset = lambda: calls.append(1) or original()  # type: ignore[method-assign]
    torch.manual_seed(0)
    module = DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), lr=0.05, input_size=dm.input_size)
    callback = MGDMatchingCallback(num_samples=128, progress_bar=False)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(module, datamodule=dm)
    assert calls and callback.history and callback.history[0]["images"] == 128
