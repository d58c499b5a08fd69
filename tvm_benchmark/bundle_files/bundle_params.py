"""The weights a bundled program takes after its input: loaded from ``.npz`` or regenerated from a recipe.

Shipped inside the GPU bundle (NumPy only). A program built with ``weights_as_params`` has
``main(x, w0, w1, ...)``: each ``wi`` is one layer's tensor-core weight, int8 ``[Np, Kp]`` (rows =
output channels zero-padded to Np, columns = (kh, kw, c) zero-padded to Kp). The weights ship once
per model and scheme, shared by every batch size:

- ``NAME.npz`` (trained checkpoints): arrays ``w0, w1, ...`` already packed;
- ``NAME.synth.json`` (models without a checkpoint, e.g. resnet50 at 224 px): a recipe per layer
  (OIHW shape, per-output-channel magnitude, seed, packed shape). :func:`synthetic_weight` makes
  the integers with 64-bit integer arithmetic only (splitmix64, sum of four uniforms ≈ a normal), so
  every machine regenerates the identical tensor; the recipe also carries a CRC-32 of each packed
  tensor, checked on load. Recipes keep resnet18/resnet50 bundles a few MB instead of ~100 MB.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SIGMA4 = 37837              # standard deviation of the sum of four uniform 16-bit integers, centred


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def synthetic_weight(shape: list[int], absmax: list[int], seed: int) -> np.ndarray:
    """Deterministic int8 weights of ``shape`` (OIHW or [O, F]): roughly normal, row ``o`` scaled so
    that 3σ ≈ ``absmax[o]`` and clipped to ±``absmax[o]`` (the exported layer's own magnitude)."""
    n = int(np.prod(shape))
    idx = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(n + 1)
    z = _splitmix64(idx)
    g = sum(((z >> np.uint64(16 * i)) & np.uint64(0xFFFF)).astype(np.int64) for i in range(4)) - 2 * 65536
    a = np.asarray(absmax, dtype=np.int64).reshape(-1, *([1] * (len(shape) - 1)))
    w = (g.reshape(shape) * a) // (3 * _SIGMA4)
    return np.clip(w, -a, a).astype(np.int8)


def pack_gemm(w: np.ndarray, packed_shape: list[int], bits: int = 8) -> np.ndarray:
    """OIHW (or [O, F]) int8 -> the tensor-core layout ``packed_shape`` = [Np, row bytes]: rows in
    (kh, kw, c) order, zero-padded; ``bits`` 4: two elements per byte, element 2j in the low nibble;
    ``bits`` 1 (±1 weights): element 8j + i in bit i of byte j (1 where −1), and after those Kp bytes
    each tap's count of −1 weights as int16 little endian (2 bytes per tap, zero-padded to 64)."""
    w = w.reshape(*w.shape, 1, 1) if w.ndim == 2 else w
    taps = w.shape[2] * w.shape[3]
    flat = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1).astype(np.int8)
    n_p, k_bytes = packed_shape
    per_byte = {4: 2, 1: 8}.get(bits, 1)
    if bits == 1:      # the row: Kp bytes, then the tap counts, padded to a multiple of 64 bytes
        k_bytes -= -(-2 * taps // 64) * 64
    neg_per_tap = (flat < 0).reshape(flat.shape[0], taps, -1).sum(-1)
    flat = np.pad(flat, ((0, n_p - flat.shape[0]), (0, k_bytes * per_byte - flat.shape[1])))
    if bits == 4:
        lo, hi = flat[:, 0::2].astype(np.int32) & 15, flat[:, 1::2].astype(np.int32) & 15
        flat = ((hi << 4) | lo).astype(np.uint8).view(np.int8)
    elif bits == 1:
        packed = np.packbits(flat < 0, axis=1, bitorder="little").view(np.int8)
        counts = np.zeros((n_p, taps), "<u2")
        counts[:neg_per_tap.shape[0]] = neg_per_tap
        pad = np.zeros((n_p, packed_shape[1] - k_bytes - 2 * taps), np.int8)
        flat = np.concatenate([packed, counts.view(np.int8), pad], axis=1)
    return np.ascontiguousarray(flat)


def batch_rows(a: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` rows of ``a``, cycling through ``a`` when ``batch`` exceeds it: the bundle
    ships 8 images and their reference logits once per model; batch 64 is those 8, eight times
    (every image is computed independently, so the check is the same, the timing that of 64)."""
    reps = -(-batch // len(a))
    return np.ascontiguousarray(np.concatenate([a] * reps)[:batch])


def load_program(path: Path, cache: Path) -> Path:
    """A program's library, decompressed into ``cache`` when shipped as ``.so.xz`` (cubins compress
    about 4x: the bundle fits the transfer limit)."""
    path = Path(path)
    if path.suffix != ".xz":
        return path
    import lzma
    packed = path.read_bytes()
    out = Path(cache) / f"{path.name[:-len('.so.xz')]}-{zlib.crc32(packed):08x}.so"   # keyed by content
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".part{os.getpid()}")
        tmp.write_bytes(lzma.decompress(packed))
        tmp.rename(out)
    return out


def crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


def materialize(recipe: dict) -> list[np.ndarray]:
    """The packed weights of a ``hawq-synth-weights/1`` recipe, each checked against its CRC-32."""
    out = []
    for layer in recipe["layers"]:
        w = pack_gemm(synthetic_weight(layer["shape"], layer["absmax"], layer["seed"]), layer["packed"],
                      layer.get("bits", 8))
        if crc(w) != layer["crc32"]:
            raise ValueError(f"regenerated weight of {layer['node']} differs from the one compiled against "
                             f"(crc32 {crc(w)} != {layer['crc32']})")
        out.append(w)
    return out


def load_params(path: Path) -> list[np.ndarray]:
    """The program's weight parameters in order, from an ``.npz`` or a ``.synth.json`` recipe."""
    path = Path(path)
    if path.name.endswith(".synth.json"):
        recipe = json.loads(path.read_text())
        if recipe.get("format") != "hawq-synth-weights/1":
            raise ValueError(f"{path}: not a hawq-synth-weights/1 recipe")
        return materialize(recipe)
    with np.load(path) as z:
        return [z[f"w{i}"] for i in range(len(z.files))]
