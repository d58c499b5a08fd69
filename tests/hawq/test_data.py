"""Tests for hawq.data: IDX parsing, Fashion-MNIST contract, loaders, subsets, ImageFolder."""
from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hawq import data as D
from hawq.errors import HawqError

needs_fmnist = pytest.mark.skipif(
    not all((Path(D.FMNIST_DIR) / f"{n}.gz").is_file() for n in D.FMNIST_FILES.values()),
    reason=f"Debian package dataset-fashion-mnist not installed ({D.FMNIST_DIR} missing); "
           "run `make setup`")


# ----------------------------------------------------------------------------- helpers
def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    """Serialize ``arr`` as an IDX file (big-endian header and payload)."""
    be = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(be).tobytes()


def write_fmnist_dir(root: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> Path:
    """A tiny Fashion-MNIST-format directory; train image i has every pixel = i % 256."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": np.broadcast_to((np.arange(n_train) % 256).astype(np.uint8)[:, None, None],
                                        (n_train, 28, 28)),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, name in D.FMNIST_FILES.items():
        payload = idx_bytes(np.ascontiguousarray(arrays[key]), 0x08)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (root / name).write_bytes(payload)
    return root


def collect(loader):
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


# ----------------------------------------------------------------------------- IDX parsing
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_uint8_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    payload = idx_bytes(arr, 0x08)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    out = D.read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_big_endian_int32(tmp_path):
    arr = np.array([1, -2, 70000, 2**31 - 1], dtype=np.int32)
    path = tmp_path / "b.idx"
    path.write_bytes(idx_bytes(arr, 0x0C))
    out = D.read_idx(path)
    assert out.dtype == np.dtype(np.int32) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("mangle, what", [
    (lambda b: b[:-1], "truncated payload"),
    (lambda b: b[:10], "truncated header"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b"\x01" + b[1:], "bad magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown type code"),
    (lambda b: gzip.compress(b)[:-20], "truncated gzip"),
    (lambda b: b"\x1f\x8b" + b"garbage" * 5, "garbage gzip"),
])
def test_read_idx_bad_file_raises(tmp_path, mangle, what):
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8), 0x08)
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(mangle(good))
    with pytest.raises(HawqError, match="bad-images-idx3-ubyte") as info:
        D.read_idx(path)
    assert "\n" not in str(info.value), what


# ----------------------------------------------------------------------------- real Fashion-MNIST
@needs_fmnist
def test_real_fashion_mnist_shapes():
    train_x, train_y, test_x, test_y = D.load_fashion_mnist()
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == np.uint8
    assert train_y.shape == (60000,) and train_y.dtype == np.int64
    assert test_y.shape == (10000,) and test_y.dtype == np.int64
    # Fashion-MNIST is balanced: 6000 / 1000 per class.
    np.testing.assert_array_equal(np.bincount(train_y, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y, minlength=10), [1000] * 10)


@needs_fmnist
def test_mean_std_constants_match_training_set():
    train_x = D.load_fashion_mnist()[0]
    x = train_x.astype(np.float64) / 255
    assert x.mean() == pytest.approx(D.FMNIST_MEAN, abs=1e-4)
    assert x.std() == pytest.approx(D.FMNIST_STD, abs=1e-4)


def test_ungzipped_directory_and_data_dir(tmp_path):
    root = write_fmnist_dir(tmp_path / "raw", gz=False)
    train_x, train_y, test_x, test_y = D.load_fashion_mnist(root)
    assert train_x.shape == (50, 28, 28) and test_x.shape == (20, 28, 28)
    assert train_x[7, 3, 3] == 7 and train_y[13] == 3
    bundle = D.build_loaders("fashion-mnist", str(root), 8, 0, 1.0, seed=0)
    assert (bundle.num_classes, bundle.input_size, bundle.name) == (10, 32, "fashion-mnist")
    assert bundle.train.dataset_size == 50 and bundle.val.dataset_size == 20


# ----------------------------------------------------------------------------- preprocessing
def test_preprocess_shape_border_and_values():
    imgs = torch.randint(1, 256, (5, 28, 28), dtype=torch.uint8)  # no zero pixel inside
    x = D.preprocess(imgs)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    zero = (0.0 - D.FMNIST_MEAN) / D.FMNIST_STD
    assert D.FMNIST_ZERO == pytest.approx(zero, abs=1e-6)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(x[:, :, border] == D.FMNIST_ZERO)
    expected = (imgs.double() / 255 - D.FMNIST_MEAN) / D.FMNIST_STD
    for c in range(3):  # three identical channels
        torch.testing.assert_close(x[:, c, 2:30, 2:30], expected.float(), atol=1e-6, rtol=0)
    assert D.preprocess(imgs[0].numpy()).shape == (1, 3, 32, 32)  # single HxW numpy image


def test_augment_is_flip_plus_translation():
    """Each augmented sample equals its padded input shifted by <= 2 px, maybe mirrored."""
    imgs = torch.randint(1, 256, (64, 28, 28), dtype=torch.uint8)
    out = D.random_flip_crop(D.pad_images(imgs), D.epoch_generator(3, 0))
    assert out.shape == (64, 32, 32) and out.dtype == torch.uint8
    big = D.pad_images(imgs, 4)  # 36x36: every +-2 px crop of the 32x32 image is a window
    seen_flip, seen_shift = set(), set()
    for i in range(64):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(
                       big[i, dy:dy + 32, dx:dx + 32]))]
        assert len(matches) == 1, f"sample {i} is not a flip/translation of its input"
        seen_flip.add(matches[0][2])
        seen_shift.add(matches[0][:2])
    assert seen_flip == {False, True} and len(seen_shift) > 5  # both flips, many offsets


def test_augment_deterministic_per_seed():
    imgs = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    a = D.augment(imgs, D.epoch_generator(1, 0))
    b = D.augment(imgs, D.epoch_generator(1, 0))
    c = D.augment(imgs, D.epoch_generator(2, 0))
    assert a.shape == (32, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ----------------------------------------------------------------------------- ArrayLoader
def make_loader(n=103, bs=10, train=True, seed=0, **kw):
    imgs = (torch.arange(n) % 256).to(torch.uint8)[:, None, None].expand(n, 28, 28).contiguous()
    return D.ArrayLoader(imgs, np.arange(n), bs, train=train, seed=seed, **kw)


def test_loader_covers_each_sample_once_and_reshuffles():
    loader = make_loader()
    assert len(loader) == 11 and loader.dataset_size == 103
    sizes = [len(y) for _, y in loader]
    assert sizes == [10] * 10 + [3]  # partial last batch kept
    x, y0 = collect(loader)
    assert x.shape == (103, 3, 32, 32) and y0.dtype == torch.int64
    assert sorted(y0.tolist()) == list(range(103))  # every sample exactly once
    assert y0.tolist() != list(range(103))  # shuffled
    # Image content follows its label (image i is filled with value i, before augmentation
    # the centre pixel is i; translation by <= 2 px keeps the centre inside the image).
    centre = x[:, 0, 16, 16]
    torch.testing.assert_close(centre, D.normalize_images((y0 % 256).to(torch.uint8)[:, None, None])[:, 0, 0, 0])
    _, y0_again = collect(loader)
    assert torch.equal(y0, y0_again)  # same epoch replays exactly
    loader.set_epoch(1)
    _, y1 = collect(loader)
    assert sorted(y1.tolist()) == list(range(103)) and not torch.equal(y0, y1)
    _, y_other_seed = collect(make_loader(seed=1))
    assert not torch.equal(y0, y_other_seed)


def test_eval_loader_is_ordered_unaugmented_and_limited():
    loader = make_loader(train=False)
    x, y = collect(loader)
    assert y.tolist() == list(range(103))
    torch.testing.assert_close(x, D.preprocess(loader.images))
    limited = make_loader(train=False, limit=25)
    assert limited.dataset_size == 25 and len(limited) == 3
    assert collect(limited)[1].tolist() == list(range(25))  # first N
    sub = make_loader(train=False, indices=[5, 2, 90], limit=2)
    assert collect(sub)[1].tolist() == [5, 2]


def test_loader_rejects_bad_arguments():
    with pytest.raises(HawqError):
        make_loader(bs=0)
    with pytest.raises(HawqError):
        make_loader(limit=0)
    with pytest.raises(HawqError):
        D.ArrayLoader(np.zeros((4, 28, 28), np.uint8), np.zeros(3), 2, train=False)
    with pytest.raises(HawqError):
        D.ArrayLoader(np.zeros((4, 28, 28), np.float32), np.zeros(4), 2, train=False)


# ----------------------------------------------------------------------------- data_percentage
def test_subset_indices_size_and_determinism():
    a = D.subset_indices(60000, 0.1, seed=0)
    assert a.shape == (6000,) and a.dtype == np.int64
    assert len(np.unique(a)) == 6000 and a.min() >= 0 and a.max() < 60000
    assert np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, D.subset_indices(60000, 0.1, seed=0))
    assert not np.array_equal(a, D.subset_indices(60000, 0.1, seed=1))
    assert len(D.subset_indices(100, 1e-9, seed=0)) == 1  # at least one sample
    assert D.subset_indices(100, 1.0, seed=0) is None  # whole set


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), "abc", None])
def test_bad_data_percentage_raises(bad, tmp_path):
    with pytest.raises(HawqError, match="data-percentage"):
        D.check_data_percentage(bad)
    root = write_fmnist_dir(tmp_path / "fm")
    with pytest.raises(HawqError, match="data-percentage"):
        D.build_loaders("fashion-mnist", str(root), 8, 0, bad, seed=0)


def test_build_loaders_data_percentage_subset(tmp_path):
    root = write_fmnist_dir(tmp_path / "fm", n_train=200)
    b1 = D.build_loaders("fashion-mnist", str(root), 16, 0, 0.25, seed=5, eval_limit=7)
    b2 = D.build_loaders("fashion-mnist", str(root), 16, 0, 0.25, seed=5)
    b3 = D.build_loaders("fashion-mnist", str(root), 16, 0, 0.25, seed=6)
    assert b1.train.dataset_size == 50 and len(b1.train) == 4
    assert b1.val.dataset_size == 7 and b2.val.dataset_size == 20
    ids = lambda b: sorted(collect(b.train)[1].tolist())  # noqa: E731
    # Labels are i % 10; identify samples by their image value instead (= index i).
    vals = lambda b: sorted(b.train.images[:, 0, 0].tolist())  # noqa: E731
    assert vals(b1) == vals(b2) and vals(b1) != vals(b3)
    assert len(set(vals(b1))) == 50
    assert len(ids(b1)) == 50


@needs_fmnist
def test_build_loaders_real_fashion_mnist():
    b = D.build_loaders("fashion-mnist", None, 512, 0, 0.05, seed=0, eval_limit=1000)
    assert b.train.dataset_size == 3000 and b.val.dataset_size == 1000
    x, y = next(iter(b.train))
    assert x.shape == (512, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= int(y.min()) and int(y.max()) <= 9


# ----------------------------------------------------------------------------- bad paths
def test_fashion_mnist_missing_dir_and_file(tmp_path):
    with pytest.raises(HawqError, match="dataset-fashion-mnist") as info:
        D.build_loaders("fashion-mnist", str(tmp_path / "nope"), 8, 0, 1.0, seed=0)
    assert str(tmp_path / "nope") in str(info.value) and "\n" not in str(info.value)
    root = write_fmnist_dir(tmp_path / "fm")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(HawqError, match="t10k-labels-idx1-ubyte") as info:
        D.load_fashion_mnist(root)
    msg = str(info.value)
    assert "make setup" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "\n" not in msg


def test_fashion_mnist_wrong_shape_rejected(tmp_path):
    root = write_fmnist_dir(tmp_path / "fm")
    (root / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(49, np.uint8), 0x08)))
    with pytest.raises(HawqError, match="labels"):
        D.load_fashion_mnist(root)


def test_unknown_dataset_and_bad_sizes(tmp_path):
    with pytest.raises(HawqError, match="unknown dataset"):
        D.build_loaders("cifar10", None, 8, 0, 1.0, seed=0)
    with pytest.raises(HawqError, match="unknown dataset"):
        D.num_classes_of("mnist", None)
    root = write_fmnist_dir(tmp_path / "fm")
    with pytest.raises(HawqError, match="batch_size"):
        D.build_loaders("fashion-mnist", str(root), 0, 0, 1.0, seed=0)
    with pytest.raises(HawqError, match="eval_limit"):
        D.build_loaders("fashion-mnist", str(root), 8, 0, 1.0, seed=0, eval_limit=0)


# ----------------------------------------------------------------------------- ImageFolder
@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A tiny ImageNet-layout tree: 3 classes x 2 images per split, 8x8 PNG and JPEG."""
    from PIL import Image

    root = tmp_path / "imnet"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(("n01", "n02", "n03")):
            d = root / split / cls
            d.mkdir(parents=True)
            for k, ext in enumerate(("png", "JPEG")):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"img{k}.{ext}",
                                             format="PNG" if ext == "png" else "JPEG")
    return root


def test_imagefolder_loaders(image_folder):
    assert D.num_classes_of("imagenet", image_folder) == 3
    assert D.num_classes_of("fashion-mnist", None) == 10
    b = D.build_loaders("imagenet", str(image_folder), 4, 0, 1.0, seed=0)
    assert (b.num_classes, b.input_size, b.name) == (3, 224, "imagenet")
    assert b.train.dataset_size == 6 and b.val.dataset_size == 6
    assert len(b.train) == 2 and len(b.val) == 2
    x, y = collect(b.train)
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    xv, yv = collect(b.val)
    assert xv.shape == (6, 3, 224, 224) and yv.tolist() == [0, 0, 1, 1, 2, 2]
    # set_epoch reseeds the shuffle: same epoch -> same order, epochs differ.
    order = lambda: list(iter(b.train.loader.sampler))  # noqa: E731
    b.train.set_epoch(0)
    o0 = order()
    b.train.set_epoch(0)
    assert order() == o0
    orders = set()
    for e in range(1, 6):
        b.train.set_epoch(e)
        orders.add(tuple(order()))
    assert len(orders | {tuple(o0)}) > 1


def test_imagefolder_subsets(image_folder):
    b = D.build_loaders("imagenet", str(image_folder), 4, 0, 0.5, seed=0, eval_limit=3)
    assert b.train.dataset_size == 3 and b.val.dataset_size == 3
    assert collect(b.val)[1].tolist() == [0, 1, 2]  # evenly spaced: one per class


def test_imagefolder_bad_paths(image_folder, tmp_path):
    with pytest.raises(HawqError, match="--data"):
        D.build_loaders("imagenet", None, 4, 0, 1.0, seed=0)
    missing = tmp_path / "missing"
    with pytest.raises(HawqError, match=re.escape(str(missing))):
        D.build_loaders("imagenet", str(missing), 4, 0, 1.0, seed=0)
    no_val = tmp_path / "no_val"
    (no_val / "train" / "a").mkdir(parents=True)
    with pytest.raises(HawqError, match=re.escape(str(no_val / "val"))):
        D.build_loaders("imagenet", str(no_val), 4, 0, 1.0, seed=0)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(HawqError, match=re.escape(str(empty / "train"))) as info:
        D.build_loaders("imagenet", str(empty), 4, 0, 1.0, seed=0)
    assert "\n" not in str(info.value)
    with pytest.raises(HawqError, match=re.escape(str(empty / "train"))):
        D.num_classes_of("imagenet", empty)
    no_images = tmp_path / "no_images"
    for split in ("train", "val"):
        (no_images / split / "cls").mkdir(parents=True)
    with pytest.raises(HawqError, match="empty ImageFolder") as info:
        D.build_loaders("imagenet", str(no_images), 4, 0, 1.0, seed=0)
    assert "\n" not in str(info.value)
    import shutil
    shutil.rmtree(image_folder / "val" / "n03")
    with pytest.raises(HawqError, match="class directories differ"):
        D.build_loaders("imagenet", str(image_folder), 4, 0, 1.0, seed=0)
