"""CUB-200-2011 (Caltech-UCSD Birds, 200 classes, 5,994 train / 5,794 test images), the paper's fine-grained set."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch.utils.data import Dataset

from .base import ImageDataModule
from .datasets import DataFileError, ImageFileDataset, folder_split_classes, scan_split
from .download import DownloadError, UnwritableError, download_and_extract, writable_dir
from .transforms import TRAIN_CROPS, TrainCrop, imagenet_transforms

__all__ = ["CUB200DataModule", "CUB_LAYOUTS", "CUB_MD5", "CUB_URL", "check_cub_tree", "detect_cub_layout"]

log = logging.getLogger(__name__)

OFFICIAL_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")

#: the official archive on CaltechDATA (https://data.caltech.edu/records/65de6-vp158; formerly
#: http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz), 1.1 GB, and its MD5: the values
#: of the widely used ``Cub2011`` dataset class (github.com/TDeVries/cub2011_dataset, ``tgz_md5``) and of
#: Avalanche's ``CUB200``. The archive holds ``CUB_200_2011/`` (and ``attributes.txt``).
CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
CUB_DIR = "CUB_200_2011"

CUB_LAYOUTS = """expected one of these CUB-200 layouts:
  (1) the official CUB_200_2011 archive, at root or at root/CUB_200_2011/:
        images/<class_dir>/<file>.jpg
        images.txt              lines '<image id> <path relative to images/>'
        image_class_labels.txt  lines '<image id> <class id 1..200>'
        train_test_split.txt    lines '<image id> <1 train | 0 test>'
        classes.txt             lines '<class id> <class name>'
  (2) train/valid image folders (the reference code's layout):
        train/<class>/*.jpg
        valid/<class>/*.jpg"""


def _read_pairs(path: Path, what: str) -> dict[int, str]:
    """``{id: rest of line}`` of a CUB ``'<id> <value>'`` text file; ``DataFileError`` (a ``ValueError``) naming the
    file on a malformed line or bytes that are not text (a corrupt file)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path} is not a text file ({error}): corrupt; extract the archive again") from error
    pairs: dict[int, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataFileError(f"{path}, line {lineno}: expected '<id> <{what}>', got {line!r}; {CUB_LAYOUTS}")
        key = int(parts[0])
        if key in pairs:
            raise DataFileError(f"{path}, line {lineno}: id {key} appears twice")
        pairs[key] = parts[1].strip()
    if not pairs:
        raise DataFileError(f"{path} is empty; {CUB_LAYOUTS}")
    return pairs


def _read_ints(path: Path, what: str, allowed: range, note: str = "") -> dict[int, int]:
    """``{image id: int}``, each value in ``allowed`` (``note``: where the bounds come from, for the error)."""
    out: dict[int, int] = {}
    for key, value in _read_pairs(path, what).items():
        if not value.isdigit() or int(value) not in allowed:
            raise DataFileError(
                f"{path}: image {key} has {what} {value!r}, expected an integer in {allowed.start}..{allowed.stop - 1}"
                + (f" ({note})" if note else "")
            )
        out[key] = int(value)
    return out


def detect_cub_layout(root: str | Path) -> tuple[str, Path]:
    """``("official", dir)`` or ``("folders", dir)`` for a CUB-200 root; ``FileNotFoundError`` names what is missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"CUB-200 root {root} {what}; {CUB_LAYOUTS}")
    for candidate in (root, root / "CUB_200_2011"):
        expected = ("images", *OFFICIAL_FILES)
        present = [name for name in expected if (candidate / name).exists()]
        if present:
            missing = [name + ("/" if name == "images" else "") for name in expected if name not in present]
            if missing or not (candidate / "images").is_dir():
                missing = missing or ["images/ (a directory)"]
                raise FileNotFoundError(
                    f"incomplete CUB_200_2011 archive at {candidate}: missing {', '.join(missing)}; {CUB_LAYOUTS}"
                )
            return "official", candidate
    folders = [root / "train", root / "valid"]
    if any(f.is_dir() for f in folders):
        missing = [f"{f.name}/" for f in folders if not f.is_dir()]
        if missing:
            raise FileNotFoundError(
                f"incomplete train/valid layout at {root}: missing {', '.join(missing)}; {CUB_LAYOUTS}"
            )
        return "folders", root
    entries = sorted(os.listdir(root))
    held = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "") if entries else "nothing"
    raise FileNotFoundError(f"no CUB-200 layout found at {root} (it holds: {held}); {CUB_LAYOUTS}")


def check_cub_tree(data_dir: Path) -> None:
    """A complete official tree at ``data_dir``: the four text files, consistent, and every image they list
    (``FileNotFoundError`` / ``ValueError`` naming what is wrong). Run on an extracted archive before it is moved
    into place."""
    kind, found = detect_cub_layout(data_dir)
    if kind != "official" or found != Path(data_dir):
        raise FileNotFoundError(f"{data_dir} is not the official CUB_200_2011 tree")
    _, train, test = CUB200DataModule._read_official(found)
    missing = [path for path, _ in train + test if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in images.txt are missing, e.g. "
                                f"{os.path.relpath(missing[0], data_dir)}")


class CUB200DataModule(ImageDataModule):
    """CUB-200-2011 with the reference code's transforms (``RandomResizedCrop(224)`` + flip; evaluation: centre crop).

    The layout under ``root`` is detected: the official archive (``root`` is ``CUB_200_2011/`` or holds it;
    split by ``train_test_split.txt``), or the reference code's ``train/<class>/`` + ``valid/<class>/`` image
    folders. ``num_classes`` (200 for the real set) comes from ``classes.txt`` or the ``train/`` class folders;
    ``classes`` holds the names. A missing or malformed layout raises ``FileNotFoundError`` / ``ValueError``
    at construction, naming the expected layouts and what is missing.

    ``download=True``: when no layout is found, ``prepare_data`` (run by Lightning on (local) rank 0 only; the
    other ranks wait at the barrier before ``setup``) downloads the official archive ``url`` into ``root`` with a
    progress bar, checks its ``md5`` and extracts ``root/CUB_200_2011/`` atomically
    (:func:`~mgd_lightning.data.download.download_and_extract`: a failed, interrupted or corrupt download leaves
    no tree behind; a wrong checksum is an error naming both sums and the URL). Nothing is fetched when the
    data is there. Then ``num_classes`` is 200 until ``setup`` reads ``classes.txt``. Outside a Trainer,
    ``setup()`` downloads itself (unless ``torch.distributed`` is initialised). ``MGD_LIGHTNING_OFFLINE=1``
    refuses the download.

    Args:
        root: the data set folder (see above).
        batch_size, num_workers, pin_memory: of the loaders (:class:`~mgd_lightning.data.base.ImageDataModule`).
        image_size: side of the square crop (224 in the paper).
        resize_size: short side after resizing, before the evaluation crop (256 in the paper) and, with
            ``train_crop="resize_random"``, before the training crop.
        train_crop: the training crop (:func:`~mgd_lightning.data.transforms.imagenet_transforms`).
            ``"random_resized"`` (default): ``RandomResizedCrop(image_size)`` + flip, what the reference code
            trains with (``cls/main_mgd.py`` and ``cls/main_base.py``). ``"resize_random"``:
            ``Resize(resize_size)`` + ``RandomCrop(image_size)`` + flip, the paper's text ("randomly crop 224
            from 256"). Evaluation and the matching pass use ``Resize(resize_size)`` + ``CenterCrop(image_size)``
            either way.
        download: fetch the official archive when no layout is found under ``root`` (see above).
        url: the archive (default :data:`CUB_URL`, CaltechDATA), e.g. a local mirror.
        md5: its MD5 (default :data:`CUB_MD5`); ``None`` skips the check (for a mirror of another file).

    Example, in a LightningCLI config:

    ```yaml
    data:
      class_path: mgd_lightning.data.CUB200DataModule
      init_args: {root: /data/CUB_200_2011, batch_size: 32, num_workers: 8}
    ```
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        image_size: int = 224,
        resize_size: int = 256,
        train_crop: TrainCrop = "random_resized",
        download: bool = False,
        url: str = CUB_URL,
        md5: str | None = CUB_MD5,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if resize_size < image_size:
            raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}; got {train_crop!r}")
        self.image_size = image_size
        self.resize_size = resize_size
        self.train_crop = train_crop
        self.download = download
        self.url = url
        self.md5 = md5
        self.input_size = (3, image_size, image_size)
        self._official: tuple[list[tuple[str, int]], list[tuple[str, int]]] | None = None
        self.layout: str | None = None
        self.data_dir: Path | None = None
        self.classes: list[str] | None = None
        self.num_classes = 200  # until the layout is read (download=True with the data not there yet)
        if not download or self._present():
            self._resolve()
        self.save_hyperparameters()

    def _present(self) -> bool:
        try:
            detect_cub_layout(self.root)  # type: ignore[arg-type]
        except FileNotFoundError:
            return False
        return True

    def _resolve(self) -> None:
        """Detect and read the layout under ``root`` (at construction, or after the download)."""
        self.layout, self.data_dir = detect_cub_layout(self.root)  # type: ignore[arg-type]
        if self.layout == "official":
            self.classes, train, test = self._read_official(self.data_dir)
            self._official = (train, test)
        else:
            self.classes = folder_split_classes(self.data_dir / "train", self.data_dir / "valid", CUB_LAYOUTS)
        self.num_classes = len(self.classes)
        log.info("CUB-200: %s layout at %s, %d classes", self.layout, self.data_dir, self.num_classes)

    def prepare_data(self) -> None:
        """With ``download=True``: download, verify and extract the archive unless a layout is already there."""
        if not self.download or self._present():
            return
        root = Path(self.root).expanduser()  # type: ignore[arg-type]
        # root may name the data set folder itself (/data/CUB_200_2011): extract beside it
        parent = root.parent if root.name == CUB_DIR else root
        target = parent / CUB_DIR
        if root.exists() and not root.is_dir():
            raise DownloadError(f"CUB-200 root {root} is a file, not a folder: download=True extracts the archive "
                                "into a folder; pass root=<a folder> (created if missing)")
        writable_dir(parent, what="the CUB-200 download")  # a file on the way, a read-only folder: one line
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            try:
                detect_cub_layout(root)
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"download=True does not overwrite {target}, which is not a complete data set: remove it to "
                    f"download the archive again. {error}"
                ) from None
        if target.is_dir():
            target.rmdir()  # an empty folder made by hand: the extracted one takes its place
        try:
            download_and_extract(self.url, parent, CUB_DIR, md5=self.md5, check=check_cub_tree)
        except UnwritableError:
            raise  # says what to do: another root
        except DownloadError as error:
            raise type(error)(  # DownloadError or ChecksumError; one line (the layouts are in the class docstring)
                f"CUB-200 download failed: {error}. Without internet, download {self.url} elsewhere and extract "
                f"it into {parent} (giving {target}/ with images/, images.txt, classes.txt, ...)"
            ) from error

    @staticmethod
    def _read_official(data_dir: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
        classes = _read_pairs(data_dir / "classes.txt", "class name")
        if sorted(classes) != list(range(1, len(classes) + 1)):
            raise DataFileError(f"{data_dir / 'classes.txt'}: class ids must be 1..{len(classes)}, each once")
        images = _read_pairs(data_dir / "images.txt", "relative image path")
        labels = _read_ints(data_dir / "image_class_labels.txt", "class id", range(1, len(classes) + 1),
                            note=f"{data_dir / 'classes.txt'} lists {len(classes)} classes: is it truncated?")
        split = _read_ints(data_dir / "train_test_split.txt", "train flag", range(0, 2))
        for name, ids in (("image_class_labels.txt", labels), ("train_test_split.txt", split)):
            if ids.keys() != images.keys():
                lacking = sorted(images.keys() - ids.keys())
                unknown = sorted(ids.keys() - images.keys())
                raise DataFileError(
                    f"{data_dir / name} does not list the image ids of images.txt: "
                    f"{len(lacking)} missing (e.g. {lacking[:3]}), {len(unknown)} unknown (e.g. {unknown[:3]}); "
                    f"{data_dir / 'images.txt'} lists {len(images)} images, {name} {len(ids)}: one of the two is "
                    "truncated or from another copy of the data set"
                )
        image_dir = data_dir / "images"
        train = [(str(image_dir / images[i]), labels[i] - 1) for i in sorted(images) if split[i] == 1]
        test = [(str(image_dir / images[i]), labels[i] - 1) for i in sorted(images) if split[i] == 0]
        for what, samples in (("training", train), ("test", test)):
            if not samples:
                raise DataFileError(f"{data_dir / 'train_test_split.txt'} marks no {what} images")
        return [classes[k] for k in sorted(classes)], train, test

    def _samples(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        if self._official is not None:
            train, test = self._official
            missing = [path for path, _ in train + test if not os.path.isfile(path)]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} image(s) listed in {self.data_dir / 'images.txt'} are missing, "
                    f"e.g. {', '.join(missing[:3])}; {CUB_LAYOUTS}"
                )
            return train, test
        train_dir, valid_dir = self.data_dir / "train", self.data_dir / "valid"
        return scan_split(train_dir, self.classes, CUB_LAYOUTS), scan_split(valid_dir, self.classes, CUB_LAYOUTS)

    def _build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        if self.layout is None:  # download=True and the data was not there at construction
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):  # outside a Trainer: nobody ran prepare_data
                self.prepare_data()
            self._resolve()
        train, test = self._samples()
        train_tf = imagenet_transforms(True, self.image_size, self.resize_size, self.train_crop)
        eval_tf = imagenet_transforms(False, self.image_size, self.resize_size)
        train_set = ImageFileDataset(train, train_tf)
        return train_set, ImageFileDataset(test, eval_tf), train_set.with_transform(eval_tf)
