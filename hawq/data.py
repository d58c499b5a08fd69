"""Datasets and batch loaders for training and evaluation.

Two datasets are supported (``build_loaders(dataset=...)``):

``fashion-mnist`` (the embedded default)
    Read from the four standard IDX files, gzipped or not, in ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist``, installed by ``make setup``) or in a user-given directory.
    The whole set lives in memory as uint8 and is batched by :class:`ArrayLoader`: gather,
    augment and normalize one batch with a handful of tensor ops. A per-sample ``DataLoader``
    would spend most of its time in Python on a 2-core machine.

``imagenet``
    Any ImageNet-layout tree ``DIR/train/<class>/*`` + ``DIR/val/<class>/*`` read with
    ``torchvision.datasets.ImageFolder`` and the standard HAWQ / pytorch-examples transforms.
    Images PIL cannot read are skipped, and counted in one warning line per pass (:class:`TorchLoader`).

Model contract for Fashion-MNIST inputs (the exported integer model sees exactly this):
a 28x28 uint8 image is zero-padded by 2 px to 32x32, scaled to [0, 1], replicated to 3 channels
and normalized with :data:`FMNIST_MEAN` / :data:`FMNIST_STD`; batches are float32 NCHW
``[B, 3, 32, 32]``. At another input size S (``--input-size``, or an arch's larger minimum) the padded
32×32 image is resized by nearest neighbour before normalizing (:func:`resize_nearest`).

Every random choice (subset, shuffle order, augmentation) comes from a ``torch.Generator`` seeded
from ``(seed, epoch)``, so a run is reproducible and an epoch can be replayed after a resume.
"""
from __future__ import annotations

import gzip
import math
import os
import sys
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hawq.errors import HawqError

__all__ = ["dataset_input_size", "DATASETS", "FMNIST_DIR", "FMNIST_FILES", "FMNIST_CLASSES", "FMNIST_HW", "FMNIST_PAD",
           "FMNIST_INPUT", "AUG_SHIFT", "FMNIST_MEAN", "FMNIST_STD", "IMAGENET_MEAN", "IMAGENET_STD",
           "IMAGENET_INPUT", "IMAGENET_RESIZE", "read_idx", "load_fashion_mnist", "FMNIST_ZERO",
           "pad_images", "normalize_images", "random_flip_crop", "resize_nearest", "preprocess", "augment",
           "epoch_generator", "check_data_percentage", "subset_indices", "ArrayLoader", "SkipUnreadable",
           "collate_readable", "TorchLoader", "imagenet_transforms", "DataBundle", "resolve_dataset",
           "num_classes_of", "build_loaders", "calibration_images"]

DATASETS = ("fashion-mnist", "imagenet")

# ----------------------------------------------------------------------------- constants
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FMNIST_CLASSES = 10
FMNIST_HW = 28  #: stored image side (pixels)
FMNIST_PAD = 2  #: zero border added on each side, 28 -> 32 (ResNet strides want a power of 2)
FMNIST_INPUT = FMNIST_HW + 2 * FMNIST_PAD  #: 32
AUG_SHIFT = 2  #: random-crop padding: translations of up to +-2 px

#: Mean and (population, ddof=0) standard deviation of all 60000*28*28 Fashion-MNIST *training*
#: pixels scaled to [0, 1], computed once in float64 over the un-padded images:
#:   x = train_images.astype(np.float64) / 255;  x.mean(), x.std()
#:   -> 0.2860405969887955, 0.35302424451492254
#: (tests/hawq/test_data.py recomputes them). Rounded to 4 digits: they are part of the model
#: contract, the rounding only has to be stable, not exact.
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530

#: ImageNet channel statistics (RGB, [0, 1] scale) used by torchvision, pytorchcv and HAWQ.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_INPUT = 224
IMAGENET_RESIZE = 256

_INSTALL_HINT = ("run `make setup` (installs Debian's dataset-fashion-mnist) or "
                 "`sudo apt-get install dataset-fashion-mnist`, or pass --data DIR holding the "
                 "four IDX files")


# ----------------------------------------------------------------------------- IDX files
# IDX header: two zero bytes, one type byte, one byte = number of dims, then one big-endian
# uint32 per dim; the data follow, big-endian, row-major. http://yann.lecun.com/exdb/mnist/
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncated gz: EOF
        raise HawqError(f"cannot read IDX file {path}: {e}") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into a native-endian NumPy array.

    Returns an array of the header's shape, dtype uint8 for type code 0x08 (the MNIST family),
    else int8/int16/int32/float32/float64. Raises :class:`HawqError` naming the file when the
    header is malformed or the payload is not exactly ``prod(dims) * itemsize`` bytes.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise HawqError(f"not an IDX file (bad magic number): {path}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise HawqError(f"IDX file {path} has unknown data type code 0x{code:02x}")
    if ndim == 0:
        raise HawqError(f"IDX file {path} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise HawqError(f"IDX file {path} is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise HawqError(f"IDX file {path} has {len(data)} bytes, its header {dims} implies "
                        f"{expected} (truncated or corrupt)")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def _find_idx(root: Path, name: str) -> Path:
    """``root/name.gz`` or else the un-gzipped ``root/name``; HawqError if neither exists."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise HawqError(f"Fashion-MNIST file missing: {root / name}.gz (nor un-gzipped {name}); "
                    f"{_INSTALL_HINT}")


@lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """read_idx memoized on (path, mtime, size): the 47 MB train set is parsed once a process."""
    arr = read_idx(path)
    arr.setflags(write=False)  # shared by every caller
    return arr


def _load_idx(path: Path) -> np.ndarray:
    st = path.stat()
    return _read_idx_cached(str(path), st.st_mtime_ns, st.st_size)


def _check_split(images: np.ndarray, labels: np.ndarray, split: str, root: Path) -> None:
    if images.ndim != 3 or images.shape[1:] != (FMNIST_HW, FMNIST_HW) or images.dtype != np.uint8:
        raise HawqError(f"Fashion-MNIST {split} images in {root} must be uint8 [N,28,28], "
                        f"got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise HawqError(f"Fashion-MNIST {split} labels in {root} must be [{images.shape[0]}], "
                        f"got {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= FMNIST_CLASSES):
        raise HawqError(f"Fashion-MNIST {split} labels in {root} must lie in [0, 9]")


def load_fashion_mnist(root: str | os.PathLike | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load Fashion-MNIST from ``root`` (default :data:`FMNIST_DIR`).

    Returns ``(train_x, train_y, test_x, test_y)``: images uint8 ``[N, 28, 28]`` (read-only,
    cached per process), labels int64 ``[N]`` in [0, 9]; N = 60000 / 10000 for the real set.
    Raises :class:`HawqError` (one line, with the install hint) when a file is missing.
    """
    root = Path(root if root is not None else FMNIST_DIR)
    if not root.is_dir():
        raise HawqError(f"Fashion-MNIST directory not found: {root}; {_INSTALL_HINT}")
    arrays = {key: _load_idx(_find_idx(root, name)) for key, name in FMNIST_FILES.items()}
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_split(x, y, split, root)
        out += [x, y.astype(np.int64)]
    return tuple(out)


# ----------------------------------------------------------------------------- preprocessing
# Normalized value of each uint8 level: one table lookup replaces scale + normalize and makes
# the mapping bit-identical wherever it is applied.
_FMNIST_LUT = ((torch.arange(256, dtype=torch.float64) / 255 - FMNIST_MEAN) / FMNIST_STD
               ).to(torch.float32)
#: What a zero (padding / background) pixel becomes after normalization.
FMNIST_ZERO = float(_FMNIST_LUT[0])


def _as_uint8_batch(images) -> torch.Tensor:
    """uint8 tensor ``[B, H, W]`` from a NumPy array or tensor ``[B, H, W]`` or ``[H, W]``.

    Read-only arrays (the cached Fashion-MNIST ones) are copied: torch cannot wrap them safely.
    """
    if not torch.is_tensor(images):
        arr = np.asarray(images)
        images = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if images.dtype != torch.uint8:
        raise HawqError(f"expected uint8 images, got {images.dtype}")
    if images.dim() == 2:
        images = images.unsqueeze(0)
    if images.dim() != 3:
        raise HawqError(f"expected images [B, H, W], got {list(images.shape)}")
    return images


def pad_images(images: torch.Tensor, pad: int = FMNIST_PAD) -> torch.Tensor:
    """Zero-pad uint8 ``[B, H, W]`` by ``pad`` pixels per side -> uint8 ``[B, H+2p, W+2p]``."""
    return F.pad(images, (pad, pad, pad, pad))


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W]`` -> float32 ``[B, 3, H, W]``: scale to [0, 1], normalize, 3 channels.

    The channel copies are materialized (contiguous) so downstream in-place ops are safe.
    """
    x = _FMNIST_LUT[images.long()]
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def random_flip_crop(images: torch.Tensor, generator: torch.Generator,
                     shift: int = AUG_SHIFT) -> torch.Tensor:
    """Random crop (``shift`` px zero padding, same size) then random horizontal flip, per sample.

    ``images``: uint8 ``[B, H, W]``; returns uint8 ``[B, H, W]``. Equivalent to torchvision's
    ``RandomCrop(H, padding=shift)`` + ``RandomHorizontalFlip()`` but one gather for the whole
    batch. Draws, in order: B flip coins, B row offsets, B column offsets, all from ``generator``.
    """
    b, h, w = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    oy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    padded = pad_images(images, shift)
    rows = oy[:, None] + torch.arange(h)                                  # [B, H]
    cols_fwd = torch.arange(w)
    cols = ox[:, None] + torch.where(flip[:, None], cols_fwd.flip(0), cols_fwd)  # [B, W]
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def resize_nearest(images: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour resize of uint8 ``[B, H, W]`` to ``[B, size, size]``: output pixel ``i``
    reads input pixel ``floor(i·H / size)`` (pure index selection: no new values, no interpolation;
    for ``size = k·H`` it is pixel repetition by ``k``)."""
    h, w = images.shape[-2:]
    if h == size and w == size:
        return images
    rows = torch.arange(size) * h // size
    cols = torch.arange(size) * w // size
    return images[:, rows[:, None], cols[None, :]]


def preprocess(images, size: int = FMNIST_INPUT) -> torch.Tensor:
    """Eval transform: uint8 ``[B, 28, 28]`` (or ``[28, 28]``) -> pad to 32, :func:`resize_nearest`
    to ``size`` -> float32 ``[B, 3, size, size]``."""
    return normalize_images(resize_nearest(pad_images(_as_uint8_batch(images)), size))


def augment(images, generator: torch.Generator, size: int = FMNIST_INPUT) -> torch.Tensor:
    """Train transform: pad to 32, random crop(+-2 px) + flip, resize to ``size``, normalize ->
    float32 ``[B, 3, size, size]``."""
    return normalize_images(resize_nearest(random_flip_crop(pad_images(_as_uint8_batch(images)), generator), size))


# ----------------------------------------------------------------------------- seeding / subsets
# Stream tags keep the epoch streams and the subset stream apart (SeedSequence treats trailing
# zero words as absent, so the tag sits *before* the epoch).
_STREAM_EPOCH, _STREAM_SUBSET = 1, 2


def _seeded_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from a tuple of ints mixed by NumPy's SeedSequence.

    Mixing (rather than seed+epoch arithmetic) keeps nearby seeds/epochs unrelated: otherwise
    (seed=1, epoch=0) would replay (seed=0, epoch=1).
    """
    words = [int(k) & 0xFFFFFFFF for k in keys]  # SeedSequence wants non-negative words
    state = np.random.SeedSequence(words).generate_state(2)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def epoch_generator(seed: int, epoch: int = 0) -> torch.Generator:
    """The generator for epoch ``epoch`` of a run seeded ``seed`` (shuffle + augmentation)."""
    return _seeded_generator(seed, _STREAM_EPOCH, epoch)


def check_data_percentage(fraction: float) -> float:
    """``fraction`` as a float in (0, 1], else HawqError."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise HawqError(f"--data-percentage must be a number in (0, 1], got {fraction!r}") from None
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise HawqError(f"--data-percentage must be in (0, 1], got {fraction!r}")
    return value


def subset_indices(n: int, fraction: float, seed: int) -> np.ndarray | None:
    """Seed-deterministic random subset of ``range(n)`` holding ``round(n * fraction)`` indices.

    At least one index; returned sorted (int64 ``[k]``) since the loader shuffles anyway.
    ``None`` when ``fraction == 1`` (the whole set, no gather needed).
    """
    fraction = check_data_percentage(fraction)
    if fraction == 1.0:
        return None
    k = min(n, max(1, round(n * fraction)))
    perm = torch.randperm(n, generator=_seeded_generator(seed, _STREAM_SUBSET))
    return np.sort(perm[:k].numpy()).astype(np.int64)


def _check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise HawqError(f"{name} must be a positive integer, got {value!r}")


# ----------------------------------------------------------------------------- in-memory loader
class ArrayLoader:
    """Batches an in-memory uint8 image set (Fashion-MNIST) without per-sample Python work.

    ``images_uint8``: ``[N, 28, 28]`` uint8 (NumPy or tensor); ``labels``: ``[N]`` integers.
    ``indices`` (optional) restricts to those samples (e.g. a ``--data-percentage`` subset);
    ``limit`` then keeps the first ``limit`` of them (deterministic eval subsets).
    Iterating yields ``(x float32 [B, 3, size, size], y int64 [B])``; the last batch may be short.
    With ``train=True`` each epoch is shuffled and augmented from ``epoch_generator(seed,
    epoch)``: call :meth:`set_epoch` before iterating; iterating the same epoch twice repeats
    it exactly. With ``train=False`` order is fixed and only :func:`preprocess` is applied.

    ``rank``/``world`` (torchrun, see :mod:`hawq.distributed`): training batches are the same
    *global* batches of ``batch_size`` as in one process, shuffled and augmented identically, and
    this rank yields its contiguous share (``torch.tensor_split`` into ``world`` parts) - the
    one-process run, split. A final global batch smaller than ``world`` is dropped (a rank
    cannot step on no samples). Evaluation yields this rank's contiguous share of the set.
    """

    def __init__(self, images_uint8, labels, batch_size: int, train: bool, seed: int = 0,
                 indices=None, limit: int | None = None, size: int = FMNIST_INPUT, rank: int = 0,
                 world: int = 1):
        _check_positive("batch_size", batch_size)
        if not 0 <= rank < world:
            raise HawqError(f"rank {rank} is not in [0, {world})")
        if train and batch_size < world:
            raise HawqError(f"--batch-size {batch_size} is smaller than the number of processes ({world})")
        _check_positive("input size", size)
        self.size = int(size)
        _check_positive("limit", limit, allow_none=True)
        images = _as_uint8_batch(images_uint8)
        labels = (labels.to(torch.int64) if torch.is_tensor(labels)
                  else torch.from_numpy(np.array(labels, dtype=np.int64)))  # own copy
        if labels.shape != images.shape[:1]:
            raise HawqError(f"labels {list(labels.shape)} do not match images "
                            f"{list(images.shape)}")
        if indices is not None:
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
            images, labels = images[idx], labels[idx]  # gather once, not every epoch
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        if not train and world > 1:
            part = torch.tensor_split(torch.arange(labels.shape[0]), world)[rank]
            images, labels = images[part], labels[part]
        self.rank, self.world = int(rank), int(world)
        self.images, self.labels = images, labels
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.dataset_size = int(labels.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order / augmentation stream of epoch ``epoch`` (train only)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full, last = divmod(self.dataset_size, self.batch_size)
        if self.train and self.world > 1:
            return full + (last >= self.world)
        return full + (last > 0)  # the partial batch is kept

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = self.dataset_size, self.batch_size
        if not self.train:
            for start in range(0, n, bs):
                yield preprocess(self.images[start:start + bs], self.size), self.labels[start:start + bs]
            return
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=g)
        for start in range(0, bs * len(self), bs):
            idx = order[start:start + bs]
            x = augment(self.images[idx], g, self.size)       # the whole global batch: same draws on every rank
            if self.world > 1:
                mine = torch.tensor_split(torch.arange(idx.shape[0]), self.world)[self.rank]
                yield x[mine], self.labels[idx][mine]
            else:
                yield x, self.labels[idx]


# ----------------------------------------------------------------------------- ImageFolder
class SkipUnreadable(torch.utils.data.Dataset):
    """An ImageFolder whose unreadable samples (not an image, truncated, no read permission: PIL's
    ``UnidentifiedImageError`` and other ``OSError``) come back as their path (a ``str``) instead of
    raising. :func:`collate_readable` drops them from the batch and :class:`TorchLoader` counts them
    in the main process, so this works with DataLoader workers too."""

    def __init__(self, folder):
        self.folder = folder
        self.root = folder.root
        self.classes = folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        try:
            return self.folder[index]
        except OSError:  # PIL.UnidentifiedImageError is an OSError
            return self.folder.samples[index][0]


def collate_readable(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """``(x, y, skipped_paths)`` of a :class:`SkipUnreadable` batch; x, y are None when no sample was readable."""
    from torch.utils.data import default_collate

    good = [s for s in batch if not isinstance(s, str)]
    x, y = default_collate(good) if good else (None, None)
    return x, y, [s for s in batch if isinstance(s, str)]


class TorchLoader:
    """A ``DataLoader`` plus :meth:`set_epoch` (reseeds its shuffling) and ``dataset_size``.

    The DataLoader draws both the sampler permutation and the workers' base seed from
    ``generator``, so with ``num_workers > 0`` shuffle order and augmentation are determined by
    ``(seed, epoch)``. With ``num_workers == 0`` the transforms draw from torch's global RNG
    (seed it with ``torch.manual_seed`` for reproducible augmentation).

    The loader's batches are :func:`collate_readable`'s: unreadable images are left out of their
    batch (a batch with none readable is skipped) and each pass ends with one line on stderr,
    ``warning: skipped N unreadable images in ROOT (first: PATH)``; a pass with no readable image
    at all is a HawqError.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, generator: torch.Generator | None,
                 seed: int, root: str | None = None):
        self.loader = loader
        self.generator = generator
        self.seed = int(seed)
        self.dataset_size = len(loader.dataset)
        self.root = root
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.generator is not None:
            self.generator.manual_seed(epoch_generator(self.seed, self.epoch).initial_seed())
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skipped: list[str] = []
        readable = 0
        try:
            for x, y, bad in self.loader:
                skipped += bad
                if x is not None:
                    readable += len(y)
                    yield x, y
        except GeneratorExit:  # the caller stopped early: report what this partial pass skipped
            self._warn_skipped(skipped)
            raise
        if skipped and not readable:
            raise HawqError(f"no readable image in {self.root}: all {len(skipped)} unreadable "
                            f"(first: {skipped[0]})")
        self._warn_skipped(skipped)

    def _warn_skipped(self, skipped: list[str]) -> None:
        if skipped:
            print(f"warning: skipped {len(skipped)} unreadable images in {self.root} (first: {skipped[0]})",
                  file=sys.stderr, flush=True)


def imagenet_transforms(train: bool, size: int = IMAGENET_INPUT):
    """HAWQ / pytorch-examples transforms -> float32 ``[3, size, size]`` normalized with ImageNet stats
    (eval: resize the short side to ``size·256/224``, centre crop ``size``)."""
    from torchvision import transforms as T

    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                          T.ToTensor(), norm])
    return T.Compose([T.Resize(round(size * IMAGENET_RESIZE / IMAGENET_INPUT)), T.CenterCrop(size), T.ToTensor(), norm])


def _split_dir(data: str | os.PathLike | None, split: str) -> Path:
    """``data/split`` after checking both exist; HawqError naming the missing path."""
    if data is None:
        raise HawqError("--dataset imagenet needs --data DIR (an ImageFolder tree with "
                        "train/<class>/ and val/<class>/)")
    root = Path(data)
    if not root.is_dir():
        raise HawqError(f"data directory not found: {root}")
    path = root / split
    if not path.is_dir():
        raise HawqError(f"ImageFolder split directory not found: {path} "
                        f"(expected {root}/train/<class>/ and {root}/val/<class>/)")
    return path


def _image_folder(data, split: str, train: bool, size: int = IMAGENET_INPUT):
    from torchvision.datasets import ImageFolder

    path = _split_dir(data, split)
    try:
        return ImageFolder(str(path), transform=imagenet_transforms(train, size))
    except (FileNotFoundError, RuntimeError) as e:  # no class dirs / no images in them
        msg = " ".join(str(e).split())
        raise HawqError(f"empty ImageFolder split {path}: {msg}") from None


def _imagefolder_classes(data) -> list[str]:
    from torchvision.datasets.folder import find_classes

    path = _split_dir(data, "train")
    try:
        return find_classes(str(path))[0]
    except FileNotFoundError:
        raise HawqError(f"empty ImageFolder split {path}: no class directories") from None


def _eval_subset_indices(n: int, limit: int) -> list[int]:
    """``limit`` evenly spaced indices of ``range(n)``.

    ImageFolder sorts samples by class, so "first N" would be one class only; evenly spaced
    indices keep the eval subset deterministic *and* class-balanced.
    """
    if limit >= n:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, limit).round()]


def _imagenet_loaders(data, batch_size: int, workers: int, fraction: float, seed: int,
                      eval_limit: int | None, rank: int = 0, world: int = 1,
                      size: int = IMAGENET_INPUT) -> tuple[TorchLoader, TorchLoader, int]:
    """ImageFolder loaders. With ``world`` > 1 (torchrun) the training set goes through a
    ``DistributedSampler`` (seeded, shuffled, drop_last) with ``batch_size // world`` per rank, and
    each rank evaluates a contiguous share of the validation set (no padding duplicates)."""
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    if world > 1 and batch_size % world:
        raise HawqError(f"--batch-size {batch_size} must be divisible by the number of processes ({world})")

    _split_dir(data, "train"), _split_dir(data, "val")  # report a missing split before scanning
    train_set = _image_folder(data, "train", train=True, size=size)
    val_set = _image_folder(data, "val", train=False, size=size)
    if train_set.classes != val_set.classes:
        raise HawqError(f"class directories differ between {Path(data) / 'train'} "
                        f"({len(train_set.classes)}) and {Path(data) / 'val'} "
                        f"({len(val_set.classes)}); labels would not line up")
    num_classes = len(train_set.classes)
    train_set, val_set = SkipUnreadable(train_set), SkipUnreadable(val_set)
    train_root, val_root = train_set.root, val_set.root
    idx = subset_indices(len(train_set), fraction, seed)
    if idx is not None:
        train_set = Subset(train_set, idx.tolist())
    if eval_limit is not None:
        val_set = Subset(val_set, _eval_subset_indices(len(val_set), eval_limit))
    pin = torch.cuda.is_available()
    g = torch.Generator()
    if world > 1:
        val_set = Subset(val_set, torch.tensor_split(torch.arange(len(val_set)), world)[rank].tolist())
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        train = DataLoader(train_set, batch_size=batch_size // world, sampler=sampler, generator=g,
                           num_workers=workers, pin_memory=pin, collate_fn=collate_readable)
    else:
        train = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=g,
                           num_workers=workers, pin_memory=pin, collate_fn=collate_readable)
    val = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=workers,
                     pin_memory=pin, collate_fn=collate_readable)
    return TorchLoader(train, g, seed, train_root), TorchLoader(val, None, seed, val_root), num_classes


# ----------------------------------------------------------------------------- entry point
@dataclass
class DataBundle:
    """What the trainer needs: loaders yielding ``(x float32 [B,3,S,S], y int64 [B])``.

    ``train`` and ``val`` have ``__len__`` (batches), ``set_epoch(epoch)`` and
    ``dataset_size`` (samples); ``input_size`` is S (32 or 224); ``name`` the dataset name.
    """

    train: ArrayLoader | TorchLoader
    val: ArrayLoader | TorchLoader
    num_classes: int
    input_size: int
    name: str


def _check_dataset(dataset: str) -> str:
    name = str(dataset).lower()
    if name not in DATASETS:
        raise HawqError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return name


def resolve_dataset(dataset: str | None, data: str | None, recorded: str | None = None) -> str:
    """The dataset to use: ``--dataset`` when given, else ``recorded`` (the dataset a checkpoint
    says it was trained on, when the caller passes one), else imagenet when ``--data`` is given,
    else fashion-mnist."""
    return dataset or recorded or ("imagenet" if data else "fashion-mnist")


def dataset_input_size(dataset: str) -> int:
    """The input side a dataset's images come at by default: 32 (Fashion-MNIST, padded), 224 (ImageNet)."""
    return FMNIST_INPUT if _check_dataset(dataset) == "fashion-mnist" else IMAGENET_INPUT


def _size(dataset: str, input_size: int | None) -> int:
    size = input_size or dataset_input_size(dataset)
    _check_positive("input size", size)
    return size


def num_classes_of(dataset: str, data: str | os.PathLike | None = None) -> int:
    """Number of classes: 10 for Fashion-MNIST, else the class directories in ``data/train``."""
    if _check_dataset(dataset) == "fashion-mnist":
        return FMNIST_CLASSES
    return len(_imagefolder_classes(data))


def build_loaders(dataset: str, data: str | os.PathLike | None, batch_size: int, workers: int,
                  data_percentage: float, seed: int, eval_limit: int | None = None,
                  rank: int = 0, world: int = 1, input_size: int | None = None) -> DataBundle:
    """Build the train / val loaders for ``dataset`` (``fashion-mnist`` or ``imagenet``).

    ``data``: for Fashion-MNIST an optional directory holding the four IDX files (default
    :data:`FMNIST_DIR`); for ``imagenet`` the required ImageFolder root. ``workers`` is used by
    the ImageFolder DataLoader only. ``data_percentage`` in (0, 1] keeps a seed-deterministic
    random subset of the training set; ``eval_limit`` caps the validation set (Fashion-MNIST:
    first N test images; ImageFolder: N evenly spaced ones). Images are ``input_size`` pixels
    square (default 32 / 224; an arch's own default: :func:`hawq.models.archs.input_size_of`).
    ``rank``/``world``: this process's
    share under torchrun (``batch_size`` is the global batch). Errors are :class:`HawqError`.
    """
    name = _check_dataset(dataset)
    _check_positive("batch_size", batch_size)
    _check_positive("eval_limit", eval_limit, allow_none=True)
    fraction = check_data_percentage(data_percentage)
    size = _size(name, input_size)
    if name == "fashion-mnist":
        train_x, train_y, test_x, test_y = load_fashion_mnist(data)
        idx = subset_indices(len(train_y), fraction, seed)
        train = ArrayLoader(train_x, train_y, batch_size, train=True, seed=seed, indices=idx, size=size,
                            rank=rank, world=world)
        val = ArrayLoader(test_x, test_y, batch_size, train=False, seed=seed, limit=eval_limit, size=size,
                          rank=rank, world=world)
        return DataBundle(train, val, FMNIST_CLASSES, size, name)
    if not isinstance(workers, (int, np.integer)) or workers < 0:
        raise HawqError(f"workers must be a non-negative integer, got {workers!r}")
    train, val, num_classes = _imagenet_loaders(data, batch_size, workers, fraction, seed,
                                                eval_limit, rank, world, size)
    return DataBundle(train, val, num_classes, size, name)


# ----------------------------------------------------------------------------- calibration sets
def calibration_images(dataset: str, data: str | os.PathLike | None, n: int, seed: int,
                       input_size: int | None = None) -> torch.Tensor:
    """``n`` training images chosen at random with ``seed``, preprocessed as for evaluation (no
    augmentation): float32 ``[n, 3, S, S]``, S = ``input_size`` (default 32 / 224). The images of
    post-training calibration and reconstruction; the same seed gives the same images.
    HawqError when the training set holds fewer than ``n`` images."""
    name = _check_dataset(dataset)
    size = _size(name, input_size)
    _check_positive("calibration size", n)
    if name == "fashion-mnist":
        train_x, _, _, _ = load_fashion_mnist(data)
        total = len(train_x)
    else:
        _split_dir(data, "train")
        folder = _image_folder(data, "train", train=False, size=size)
        total = len(folder)
    if n > total:
        raise HawqError(f"calibration size {n} is larger than the training set ({total} images)")
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:n].sort().values
    if name == "fashion-mnist":
        return preprocess(_as_uint8_batch(train_x)[idx], size)
    return torch.stack([folder[int(i)][0] for i in idx])
