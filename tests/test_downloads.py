"""Downloads without internet: small archives in the real formats served from a local HTTP server (127.0.0.1).

CUB-200 (official archive layout, MD5, atomic extraction, interrupted and corrupt downloads), CIFAR-100 through
torchvision's download, ImageNet's message, and torchvision weights into a temporary torch hub cache
(``MGD_LIGHTNING_OFFLINE=1`` and ``download=False`` refusing with the one-line message).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from mgd_lightning.data import CIFAR100DataModule, CUB200DataModule, ImageNetDataModule
from mgd_lightning.data.download import ChecksumError, DownloadError, md5sum
from mgd_lightning.models import build_model
from tests.test_data import SMALL, _make_cifar, _make_cub


# ---------------------------------------------------------------------------------------------- local server
class _Server:
    """Serves ``files`` (``/name`` -> bytes); ``truncate`` names paths whose body stops halfway (connection closed)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _head(self) -> bytes | None:
                server.requests.append((self.command, self.path))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return None
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return body

            def do_HEAD(self) -> None:  # noqa: N802 (torchvision follows redirects with HEAD requests)
                self._head()

            def do_GET(self) -> None:  # noqa: N802
                body = self._head()
                if body is None:
                    return
                if self.path in server.truncate:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def gets(self) -> int:
        return sum(1 for command, _ in self.requests if command == "GET")


@pytest.fixture
def server():
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)


def _tgz(source: Path, *names: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in names:
            tar.add(source / name, arcname=name)
    return buffer.getvalue()


@pytest.fixture
def cub_archive(tmp_path) -> bytes:
    """A small ``CUB_200_2011.tgz`` in the official layout (``CUB_200_2011/`` + top-level ``attributes.txt``)."""
    source = tmp_path / "source"
    _make_cub(source, num_classes=3, per_class=4)
    (source / "attributes.txt").write_text("1 has_bill_shape::curved\n")
    return _tgz(source, "attributes.txt", "CUB_200_2011")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    """Temporary files or folders of a download (``.<name>.part-*``, ``.<name>.extract-*``, ...)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------- CUB-200
def test_cub_defaults_are_the_official_archive():
    import inspect

    params = inspect.signature(CUB200DataModule.__init__).parameters
    assert params["download"].default is False
    assert params["url"].default == "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
    assert params["md5"].default == "97eceeb196236b17998738112f37df78"


def test_cub_download_verify_extract_then_no_op(tmp_path, server, cub_archive):
    server.files["/CUB_200_2011.tgz"] = cub_archive
    url, root = server.url("CUB_200_2011.tgz"), tmp_path / "data"
    dm = CUB200DataModule(str(root), batch_size=4, download=True, url=url, md5=_md5(cub_archive), **SMALL)
    assert server.gets() == 0 and dm.num_classes == 200  # nothing fetched at construction
    dm.prepare_data()
    assert server.gets() == 1
    assert (root / "CUB_200_2011" / "images.txt").is_file() and (root / "attributes.txt").is_file()
    assert not (root / "CUB_200_2011.tgz").exists() and _leftovers(root) == []  # archive and temporaries removed
    dm.setup()
    assert dm.num_classes == 3 and dm.layout == "official" and len(dm.train_dataset) == 6
    x, _ = dm.train_dataset[0]
    assert x.shape == (3, 32, 32)
    # the data is there: no request, neither from prepare_data nor from a new module
    dm.prepare_data()
    again = CUB200DataModule(str(root), download=True, url=url, md5=_md5(cub_archive), **SMALL)
    again.prepare_data()
    again.setup()
    assert again.num_classes == 3 and server.gets() == 1
    # root may name the data set folder itself
    assert CUB200DataModule(str(root / "CUB_200_2011"), download=True, url=url).num_classes == 3
    assert server.gets() == 1


def test_cub_setup_outside_a_trainer_downloads(tmp_path, server, cub_archive):
    server.files["/CUB_200_2011.tgz"] = cub_archive
    root = tmp_path / "CUB_200_2011"  # the data set folder itself: extracted in place
    dm = CUB200DataModule(str(root), batch_size=4, download=True, url=server.url("CUB_200_2011.tgz"),
                          md5=_md5(cub_archive), **SMALL)
    assert len(dm.matching_dataset()) == 6 and server.gets() == 1
    assert (root / "images.txt").is_file() and _leftovers(tmp_path) == []


def test_cub_other_ranks_do_not_download(tmp_path, server, cub_archive, monkeypatch):
    """Under DDP only prepare_data (rank 0) downloads: setup on a rank where it did not run finds no data."""
    server.files["/CUB_200_2011.tgz"] = cub_archive
    dm = CUB200DataModule(str(tmp_path / "data"), download=True, url=server.url("CUB_200_2011.tgz"), **SMALL)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(FileNotFoundError, match="CUB-200 root .* does not exist"):
        dm.setup()
    assert server.gets() == 0


def test_cub_wrong_md5_is_a_clear_error_and_leaves_nothing(tmp_path, server, cub_archive):
    server.files["/CUB_200_2011.tgz"] = cub_archive
    url, root = server.url("CUB_200_2011.tgz"), tmp_path / "data"
    wrong = "0" * 32
    dm = CUB200DataModule(str(root), download=True, url=url, md5=wrong, **SMALL)
    with pytest.raises(ChecksumError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert f"expected {wrong}, got {_md5(cub_archive)}" in message and url in message
    assert list(root.iterdir()) == []  # no archive, no temporary file, no tree
    with pytest.raises(FileNotFoundError, match="no CUB-200 layout found"):
        CUB200DataModule(str(root))


def test_cub_interrupted_download_leaves_nothing(tmp_path, server, cub_archive):
    server.files["/CUB_200_2011.tgz"] = cub_archive
    server.truncate.add("/CUB_200_2011.tgz")
    root = tmp_path / "data"
    for md5 in (_md5(cub_archive), None):  # caught by the length check even without a checksum
        dm = CUB200DataModule(str(root), download=True, url=server.url("CUB_200_2011.tgz"), md5=md5, **SMALL)
        with pytest.raises(DownloadError, match=r"interrupted download of .*CUB_200_2011\.tgz: got \d+ of \d+ bytes"):
            dm.prepare_data()
        assert list(root.iterdir()) == []
    # the server works again: the next run downloads it
    server.truncate.clear()
    dm.prepare_data()
    assert (root / "CUB_200_2011" / "classes.txt").is_file() and _leftovers(root) == []


def test_cub_corrupt_archive_with_right_length_leaves_no_tree(tmp_path, server, cub_archive):
    broken = cub_archive[: len(cub_archive) // 2]  # a truncated gzip served in full: extraction fails
    server.files["/CUB_200_2011.tgz"] = broken
    root = tmp_path / "data"
    dm = CUB200DataModule(str(root), download=True, url=server.url("CUB_200_2011.tgz"), md5=None, **SMALL)
    with pytest.raises(DownloadError, match="could not extract"):
        dm.prepare_data()
    assert list(root.iterdir()) == []


def test_cub_unreachable_and_offline(tmp_path, server, cub_archive, monkeypatch):
    root = tmp_path / "data"
    dm = CUB200DataModule(str(root), download=True, url=server.url("missing.tgz"), **SMALL)
    with pytest.raises(DownloadError, match=r"(?s)CUB-200 download failed: could not download .*missing\.tgz.*404"):
        dm.prepare_data()
    server.files["/CUB_200_2011.tgz"] = cub_archive
    monkeypatch.setenv("MGD_LIGHTNING_OFFLINE", "1")
    dm = CUB200DataModule(str(root), download=True, url=server.url("CUB_200_2011.tgz"), **SMALL)
    with pytest.raises(DownloadError, match="MGD_LIGHTNING_OFFLINE=1: not downloading"):
        dm.prepare_data()
    assert server.gets() == 1 and _leftovers(root) == [] and not (root / "CUB_200_2011").exists()


def test_cub_incomplete_tree_is_not_overwritten(tmp_path, server, cub_archive):
    server.files["/CUB_200_2011.tgz"] = cub_archive
    root = tmp_path / "data"
    (root / "CUB_200_2011" / "images").mkdir(parents=True)
    dm = CUB200DataModule(str(root), download=True, url=server.url("CUB_200_2011.tgz"), **SMALL)
    pattern = r"(?s)does not overwrite .*CUB_200_2011, which is not a complete.*incomplete CUB_200_2011 archive"
    with pytest.raises(FileNotFoundError, match=pattern):
        dm.prepare_data()
    assert server.gets() == 0


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


def test_cub_download_into_a_file_root_is_a_one_line_error(tmp_path, server, cub_archive):
    server.files["/CUB_200_2011.tgz"] = cub_archive
    root = tmp_path / "data"
    root.write_text("not a folder")
    dm = CUB200DataModule(str(root), download=True, url=server.url("CUB_200_2011.tgz"), **SMALL)
    with pytest.raises(DownloadError) as error:
        dm.prepare_data()
    assert f"CUB-200 root {root} is a file, not a folder" in _one_line(error.value)
    # a root under a file
    dm = CUB200DataModule(str(root / "sub"), download=True, url=server.url("CUB_200_2011.tgz"), **SMALL)
    with pytest.raises(DownloadError) as error:
        dm.prepare_data()
    assert f"{root} is a file, not a folder" in _one_line(error.value)
    assert server.gets() == 0 and root.read_text() == "not a folder"


def test_cub_download_into_a_read_only_root_is_a_one_line_error(tmp_path, server, cub_archive, monkeypatch):
    """A read-only folder (root bypasses permission bits, so the refusal of the file system is simulated)."""
    import mgd_lightning.data.download as download

    server.files["/CUB_200_2011.tgz"] = cub_archive
    root = tmp_path / "data"
    root.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(download.tempfile, "mkstemp", refuse)
    dm = CUB200DataModule(str(root), download=True, url=server.url("CUB_200_2011.tgz"), **SMALL)
    with pytest.raises(DownloadError) as error:
        dm.prepare_data()
    message = _one_line(error.value)
    assert f"cannot write the download of {server.url('CUB_200_2011.tgz')} into {root}" in message
    assert "PermissionError: Permission denied" in message and "can write to" in message, message
    assert "Without internet" not in message  # not a network problem
    monkeypatch.setattr(download.os, "access", lambda *args: False)  # the up-front check
    with pytest.raises(DownloadError, match=f"cannot write the CUB-200 download into {root}"):
        dm.prepare_data()
    assert list(root.iterdir()) == [] and server.gets() == 0


@pytest.mark.parametrize("damage", ["no images.txt", "an image missing"])
def test_cub_archive_with_the_right_md5_but_an_incomplete_tree_is_not_moved_into_place(tmp_path, server, damage):
    source = tmp_path / "source"
    tree = _make_cub(source, num_classes=3, per_class=4)
    if damage == "no images.txt":
        (tree / "images.txt").unlink()
    else:
        next((tree / "images").rglob("*.jpg")).unlink()
    archive = _tgz(source, "CUB_200_2011")
    server.files["/CUB_200_2011.tgz"] = archive
    root = tmp_path / "data"
    dm = CUB200DataModule(str(root), download=True, url=server.url("CUB_200_2011.tgz"), md5=_md5(archive), **SMALL)
    with pytest.raises(DownloadError) as error:
        dm.prepare_data()
    message = _one_line(error.value)
    assert "CUB_200_2011.tgz extracted to an incomplete or malformed CUB_200_2011/" in message
    assert ("missing images.txt" if damage == "no images.txt" else "1 image(s) listed in images.txt are missing") \
        in message
    assert "the archive itself is incomplete" in message and ".extract-" not in message
    assert list(root.iterdir()) == []  # no tree, no archive, no temporary folder: the next run may try another copy


@pytest.mark.parametrize("member", ["/tmp/evil.txt", "../evil.txt", "CUB_200_2011/../../evil.txt"])
def test_cub_archive_with_an_absolute_or_parent_member_is_refused(tmp_path, server, member):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    server.files["/CUB_200_2011.tgz"] = buffer.getvalue()
    root = tmp_path / "data"
    dm = CUB200DataModule(str(root), download=True, url=server.url("CUB_200_2011.tgz"), md5=None, **SMALL)
    with pytest.raises(DownloadError) as error:
        dm.prepare_data()
    kind = "an absolute path" if member.startswith("/") else "a '..' component"
    assert f"unsafe archive member {member!r} ({kind})" in _one_line(error.value)
    assert list(root.iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_cub_offline_error_is_one_line(tmp_path, server, cub_archive, monkeypatch):
    server.files["/CUB_200_2011.tgz"] = cub_archive
    monkeypatch.setenv("MGD_LIGHTNING_OFFLINE", "1")
    dm = CUB200DataModule(str(tmp_path / "data"), download=True, url=server.url("CUB_200_2011.tgz"), **SMALL)
    with pytest.raises(DownloadError) as error:
        dm.prepare_data()
    message = _one_line(error.value)
    assert "MGD_LIGHTNING_OFFLINE=1: not downloading" in message and "Without internet, download" in message


# ---------------------------------------------------------------------------------------------- CIFAR-100
def test_cifar100_download_through_torchvision(tmp_path, server, monkeypatch):
    from torchvision.datasets import CIFAR100

    source = tmp_path / "source"
    _make_cifar(source, n_train=6, n_test=4)
    archive = _tgz(source, "cifar-100-python")
    server.files["/cifar-100-python.tar.gz"] = archive
    files = source / "cifar-100-python"
    # torchvision's own download, pointed at the local server, with the MD5 sums of the small files
    monkeypatch.setattr(CIFAR100, "url", server.url("cifar-100-python.tar.gz"))
    monkeypatch.setattr(CIFAR100, "tgz_md5", _md5(archive))
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5sum(files / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5sum(files / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5sum(files / "meta")})
    root = tmp_path / "data"
    dm = CIFAR100DataModule(str(root), batch_size=2, download=True)
    dm.prepare_data()
    fetched = server.gets()  # torchvision's redirect probe is a GET too
    assert fetched >= 1 and sorted(p.name for p in root.iterdir()) == ["cifar-100-python"]  # no temporaries
    dm.setup()
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 4 and dm.classes[0] == "fine_0"
    dm.prepare_data()
    CIFAR100DataModule(str(root), download=True).prepare_data()
    assert server.gets() == fetched  # there: no request
    # a corrupt archive: torchvision's MD5 check fails, nothing is left under root
    monkeypatch.setattr(CIFAR100, "tgz_md5", "0" * 32)
    other = tmp_path / "other"
    with pytest.raises(DownloadError, match="CIFAR-100 download failed: could not download .*cifar-100-python"):
        CIFAR100DataModule(str(other), download=True).prepare_data()
    assert list(other.iterdir()) == []


def test_cifar100_offline(tmp_path, server, monkeypatch):
    monkeypatch.setenv("MGD_LIGHTNING_OFFLINE", "1")
    with pytest.raises(DownloadError, match="MGD_LIGHTNING_OFFLINE=1: not downloading CIFAR-100"):
        CIFAR100DataModule(str(tmp_path), download=True).prepare_data()


# ---------------------------------------------------------------------------------------------- ImageNet
def test_imagenet_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        ImageNetDataModule(str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "image-net.org" in message and "not downloaded automatically" in message
    assert "train/<wnid>/*.JPEG" in message and "val/<wnid>/*.JPEG" in message


# ---------------------------------------------------------------------------------------------- weights
NAME, BASE = "shufflenet_v2_x0_5", "shufflenet_v2_x0_5"


@pytest.fixture
def weight_file(server, monkeypatch, tmp_path):
    """The IMAGENET1K_V1 weight of ``shufflenet_v2_x0_5`` served locally: ``(weight, reference state, file name)``;
    its URL points at the server (file name with the SHA-256 prefix torch.hub checks); TORCH_HOME is temporary."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("MGD_LIGHTNING_OFFLINE", raising=False)
    torch.manual_seed(3)
    state = getattr(torchvision.models, NAME)().state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    name = f"shufflenetv2_x0.5-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files[f"/{name}"] = data
    weight = torchvision.models.get_model_weights(NAME).IMAGENET1K_V1
    monkeypatch.setattr(weight.value, "url", server.url(name))
    return weight, state, name


def test_weights_downloaded_into_the_hub_cache(weight_file, server, tmp_path):
    weight, state, name = weight_file
    model = build_model(NAME, num_classes=1000, weights="IMAGENET1K_V1")
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / name
    assert cached.is_file() and server.gets() == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [p.name for p in cached.parent.iterdir()] == [name]  # no temporary file left
    build_model(NAME, num_classes=10, weights="IMAGENET1K_V1", download=False)  # cached: no request, no refusal
    assert server.gets() == 1


def test_weights_offline_refuse_with_the_one_line_message(weight_file, server, tmp_path, monkeypatch):
    weight, _, name = weight_file
    expected = tmp_path / "torch-home" / "hub" / "checkpoints" / name
    monkeypatch.setenv("MGD_LIGHTNING_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as error:
        build_model(NAME, weights="IMAGENET1K_V1")
    message = str(error.value)
    assert message.startswith(f"weights {BASE}/IMAGENET1K_V1 are not available offline: expected the file {expected}")
    assert weight.url in message and "MGD_LIGHTNING_OFFLINE=1" in message and "\n" not in message
    monkeypatch.delenv("MGD_LIGHTNING_OFFLINE")
    with pytest.raises(FileNotFoundError, match=r"not available offline: .*download=False"):
        build_model(NAME, weights="IMAGENET1K_V1", download=False)
    assert server.gets() == 0 and not expected.exists()


def test_weights_failed_download_is_the_one_line_message(weight_file, server, tmp_path, monkeypatch):
    weight, _, name = weight_file
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    # no network: connection refused (a closed port)
    monkeypatch.setattr(weight.value, "url", f"http://127.0.0.1:9/{name}")
    with pytest.raises(FileNotFoundError) as error:
        build_model(NAME, weights="IMAGENET1K_V1")
    message = str(error.value)
    assert message.startswith(f"weights {BASE}/IMAGENET1K_V1 are not available offline: expected the file")
    assert f"Download http://127.0.0.1:9/{name}" in message and "the download failed: URLError" in message
    assert "\n" not in message
    # a file whose hash is not the one in its name (torch.hub's check): refused, nothing left in the cache
    wrong = f"shufflenetv2_x0.5-{'0' * 8}.pth"
    server.files[f"/{wrong}"] = server.files[f"/{name}"]
    monkeypatch.setattr(weight.value, "url", server.url(wrong))
    with pytest.raises(FileNotFoundError, match="the download failed: RuntimeError: invalid hash value"):
        build_model(NAME, weights="IMAGENET1K_V1")
    assert not checkpoints.exists()  # the cache is as it was
