"""Per-layer bit-width assignments (HAWQ-V3 ``bit_config``): loading, validation, size and BOPS.

A *scheme* maps every HAWQ quantizer name of an arch (see :func:`hawq.models.layers.quant_layers`)
to a bit width: 4 or 8 for activation quantizers, convolutions and the output linear layer, 16
for the ``quant_act_int32`` residual-accumulator requantizers.

Named schemes live in ``hawq/bit_configs/<arch>.json`` (``{"arch", "source", "schemes":
{name: {layer: bits}}}``). :func:`load_scheme` also accepts HAWQ-V3's spellings of a name
(``bit_config_resnet18_uniform8``, ``size0.5``, ``bops0.5``, ``latency0.5``) and a path to a
JSON file in one of these forms::

    {"stage1.unit1.quant_act": 8, ...}                           # flat {layer: bits}
    {"arch": "resnet18", "bit_config": {layer: bits}}           # "arch" optional
    {"arch": "resnet18", "schemes": {"my_scheme": {layer: bits}}}  # exactly one scheme

``fp32`` (no quantization) is not a scheme; callers handle it.

Units: model size in MiB (2**20 bytes; HAWQ-V3's "MB") counts conv and linear weights only
(biases excluded) at their weight bit width; BOPS = sum over conv/linear layers of MACs per
image x weight bits x bits of the activation quantizer feeding the layer, reported in GBOPS
(1e9 bit operations) at the arch's canonical input size.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from hawq import numerics as N
from hawq.errors import HawqError
from hawq.models.archs import ARCHS, arch_info
from hawq.models.layers import WEIGHT_KINDS, LayerSpec, quant_layers

__all__ = ["BIT_CONFIG_DIR", "ALLOWED_BITS", "PAPER_FIGURES", "TABLE_COLUMNS", "uniform_bits", "binary_bits",
           "bits_of_layers", "list_schemes", "canonical_scheme_name", "validate_scheme", "load_scheme",
           "scheme_stats", "table_rows", "table_csv"]

BIT_CONFIG_DIR = Path(__file__).resolve().parent / "bit_configs"

#: Allowed bit widths per layer kind.
ALLOWED_BITS: dict[str, tuple[int, ...]] = {
    "act": (1, 2, 3, 4, 5, 6, 7, 8),   # below 8 bits: int8 containers with the narrow clamp range;
    "conv": (1, 2, 3, 4, 5, 6, 7, 8),  # 1: the sign grid {-1, +1} (binary networks, --quantizer xnor|bireal)
    "linear": (1, 2, 3, 4, 5, 6, 7, 8),
    "act_int32": (16,),
}

#: HAWQ-V3 model-zoo figures, {arch: {scheme: (size MB, GBOPS)}} as published.
PAPER_FIGURES: dict[str, dict[str, tuple[float, float]]] = {
    "resnet18": {
        "uniform8": (11.1, 116),
        "modelsize_0.75": (9.9, 103),
        "modelsize_0.5": (7.9, 98),
        "modelsize_0.25": (7.3, 95),
        "bops_0.75": (8.7, 92),
        "bops_0.5": (6.7, 72),
        "bops_0.25": (6.1, 54),
        "latency_0.75": (8.7, 92),
        "latency_0.5": (7.2, 76),
        "latency_0.25": (6.1, 54),
        "uniform4": (5.8, 34),
    },
    "resnet50": {
        "uniform8": (24.5, 247),
        "modelsize_0.75": (21.3, 226),
        "modelsize_0.5": (19.0, 197),
        "modelsize_0.25": (16.0, 168),
        "bops_0.75": (22.0, 197),
        "bops_0.5": (18.7, 154),
        "bops_0.25": (16.7, 110),
        "latency_0.75": (22.3, 199),
        "latency_0.5": (18.5, 155),
        "latency_0.25": (16.5, 114),
        "uniform4": (13.1, 67),
    },
}

#: Columns of :func:`table_rows`.
TABLE_COLUMNS = ("arch", "scheme", "size_mb", "gbops", "paper_size_mb", "paper_gbops")

# HAWQ-V3 model-zoo short names: size0.5 -> modelsize_0.5, bops0.5 -> bops_0.5, ...
_ALIAS_RE = re.compile(r"^(size|bops|latency)(\d.*)$")
_ALIAS_PREFIX = {"size": "modelsize_", "bops": "bops_", "latency": "latency_"}


class _Scheme(NamedTuple):
    """A scheme before validation: display label, raw bits, file it came from (or None)."""

    label: str
    bits: object
    path: Path | None


# --------------------------------------------------------------------------- named schemes
@functools.lru_cache(maxsize=None)
def _arch_schemes(arch: str) -> dict[str, dict[str, int]]:
    """The ``schemes`` of ``hawq/bit_configs/<arch>.json`` ({} when the arch has no file)."""
    if arch_info(arch).family == "captured":
        schemes = {f"uniform{b}": uniform_bits(arch, b) for b in (8, 6, 5, 4, 3, 2)}
        binary = binary_bits(quant_layers(arch))
        if N.BINARY in binary.values():
            schemes["binary"] = binary
        return schemes
    path = BIT_CONFIG_DIR / f"{arch}.json"
    return _read_json(path)["schemes"] if path.is_file() else {}


def uniform_bits(arch: str, bits: int) -> dict[str, int]:
    """HAWQ's ``uniformN`` for any arch (:func:`bits_of_layers` of its inventory, first/last at 8)."""
    return bits_of_layers(quant_layers(arch), bits, bits, first_last_8bit=True)


def bits_of_layers(specs: Sequence[LayerSpec], w_bits: int, a_bits: int, first_last_8bit: bool) -> dict[str, int]:
    """{layer: bits} of an inventory: every conv/linear at ``w_bits``, every activation quantizer at
    ``a_bits``, residual accumulators at 16; ``first_last_8bit`` (HAWQ-V3's published uniform4)
    keeps the model input, the first conv, the last linear and the quantizer feeding it at 8."""
    out = {s.name: 16 if s.kind == "act_int32" else (w_bits if s.kind in WEIGHT_KINDS else a_bits) for s in specs}
    if first_last_8bit:
        weighted = [s for s in specs if s.kind in WEIGHT_KINDS]
        acts = [s for s in specs if s.kind == "act"]
        keep = {weighted[0].name, weighted[-1].name, acts[0].name, weighted[-1].input_act} - {None}
        out.update({k: 8 for k in keep})
    return out


def _stem_and_head(specs: Sequence[LayerSpec]) -> tuple[set[str], str | None]:
    """(names of the weighted layers reading the image quantizer, name of the last weighted layer)."""
    weighted = [s for s in specs if s.kind in WEIGHT_KINDS]
    acts = [s for s in specs if s.kind == "act"]
    stem = {s.name for s in weighted if acts and s.input_act == acts[0].name}
    return stem, (weighted[-1].name if weighted else None)


def binary_bits(specs: Sequence[LayerSpec]) -> dict[str, int]:
    """The ``binary`` scheme (W1/A1, Bi-Real's and XNOR-Net's layout) of a captured inventory: a
    k×k conv (k > 1) reading a signed activation quantizer is binary, with that quantizer 1-bit, when
    every layer the quantizer feeds is such a conv; the stem, the classifier, 1×1 (downsampling)
    convs, their inputs and the image quantizer stay 8-bit, residual accumulators 16."""
    stem, head = _stem_and_head(specs)
    role = {s.name: s.role for s in specs if s.kind == "act"}
    eligible = {s.name for s in specs if s.kind == "conv" and s.kernel > 1 and s.name not in stem | {head}
                and role.get(s.input_act) == "signed"}
    feeds: dict[str, list[str]] = {}
    for s in specs:
        if s.kind in WEIGHT_KINDS:
            feeds.setdefault(s.input_act, []).append(s.name)
    one_bit = {a for a, layers in feeds.items() if all(n in eligible for n in layers)}
    out = bits_of_layers(specs, 8, 8, first_last_8bit=False)
    for s in specs:
        if s.name in one_bit or (s.kind in WEIGHT_KINDS and s.input_act in one_bit):
            out[s.name] = N.BINARY
    return out


def list_schemes(arch: str) -> list[str]:
    """Names of the published/project schemes of ``arch``, in file order."""
    return list(_arch_schemes(arch))


def canonical_scheme_name(arch: str, name: str) -> str:
    """``name`` with HAWQ-V3's long prefix (``bit_config_<arch>_``) and short aliases resolved."""
    name = name.removeprefix(f"bit_config_{arch}_")
    match = _ALIAS_RE.match(name)
    return _ALIAS_PREFIX[match[1]] + match[2] if match else name


# --------------------------------------------------------------------------- JSON files
def _read_json(path: Path) -> object:
    """Parsed contents of ``path``; unreadable or malformed files raise a one-line HawqError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HawqError(f"bit_config file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HawqError(f"bit_config file {path}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HawqError(f"bit_config file {path}: invalid JSON: {exc}") from None


def _bits_from_file(arch: str, path: Path) -> object:
    """The {layer: bits} object of a scheme file in one of the documented forms."""
    data = _read_json(path)
    where = f"bit_config file {path}"
    if not isinstance(data, dict):
        raise HawqError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if "schemes" not in data and "bit_config" not in data:
        return data
    if data.get("arch", arch) != arch:
        raise HawqError(f"{where}: is for arch {data['arch']!r}, not {arch!r}")
    if "bit_config" in data:
        return data["bit_config"]
    schemes = data["schemes"]
    if not isinstance(schemes, dict) or len(schemes) != 1:
        names = ", ".join(schemes) if isinstance(schemes, dict) else type(schemes).__name__
        raise HawqError(f"{where}: 'schemes' must hold exactly one scheme, found: {names or 'none'}")
    return next(iter(schemes.values()))


def _looks_like_path(scheme: str | Path) -> bool:
    return isinstance(scheme, Path) or scheme.endswith(".json") or "/" in scheme


def _resolve(arch: str, scheme: str | Path) -> _Scheme:
    """Find ``scheme`` (a name, alias or JSON path) for ``arch``, without validating bits."""
    schemes = _arch_schemes(arch)
    if not isinstance(scheme, Path):
        name = canonical_scheme_name(arch, scheme)
        if name in schemes:
            return _Scheme(name, schemes[name], None)
    if _looks_like_path(scheme) and Path(scheme).is_file():
        path = Path(scheme)
        return _Scheme(path.stem, _bits_from_file(arch, path), path)
    available = ", ".join(schemes) or "none"
    raise HawqError(
        f"bit_config for {arch}: no scheme or JSON file {str(scheme)!r}; "
        f"available schemes: {available} (or a path to a .json file)"
    )


# --------------------------------------------------------------------------- validation
def _check_bits(where: str, kind: str, name: str, value: object) -> None:
    allowed = ALLOWED_BITS[kind]
    if type(value) is not int:  # rejects "8", 8.0 and True alike
        raise HawqError(f"{where}: layer {name!r} has non-integer bits {value!r}")
    if value not in allowed:
        allowed_text = ", ".join(map(str, allowed))
        raise HawqError(f"{where}: layer {name!r} ({kind}) has {value} bits; allowed: {allowed_text}")


def validate_scheme(arch: str, bits: object, source: str | None = None) -> dict[str, int]:
    """Check ``bits`` against ``quant_layers(arch)``; return it in layer order.

    Raises :class:`HawqError` naming the first unknown layer, missing layer or bad bit width.
    ``source`` (e.g. a file name) is added to the message.
    """
    where = f"bit_config for {arch}" + (f" ({source})" if source else "")
    if not isinstance(bits, Mapping):
        raise HawqError(f"{where}: expected a {{layer: bits}} object, got {type(bits).__name__}")
    layers = quant_layers(arch)
    known = {spec.name for spec in layers}
    unknown = [name for name in bits if name not in known]
    if unknown:
        raise HawqError(f"{where}: unknown layer {unknown[0]!r}")
    missing = [spec.name for spec in layers if spec.name not in bits]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HawqError(f"{where}: layer {missing[0]!r} is missing{more}")
    for spec in layers:
        _check_bits(where, spec.kind, spec.name, bits[spec.name])
    stem, head = _stem_and_head(layers)
    for name in sorted(stem | {head} - {None}):
        if bits[name] == N.BINARY:
            part = "the classifier" if name == head else "the stem (it reads the image)"
            raise HawqError(f"{where}: layer {name!r} is {part} and cannot be 1-bit; binary networks keep "
                            "their first conv and last linear layer at 8 bits")
    return {spec.name: bits[spec.name] for spec in layers}


def load_scheme(arch: str, scheme: str | Path) -> dict[str, int]:
    """The validated {layer: bits} of ``scheme`` (name, HAWQ alias or JSON path) for ``arch``."""
    found = _resolve(arch, scheme)
    return validate_scheme(arch, found.bits, source=str(found.path) if found.path else None)


# --------------------------------------------------------------------------- size / BOPS
def scheme_stats(arch: str, bits: Mapping[str, int]) -> tuple[float, float]:
    """(model size in MiB, GBOPS per image at the canonical input size) of a valid scheme."""
    bits = validate_scheme(arch, bits)
    size_bits = bops = 0
    for spec in quant_layers(arch):
        if spec.kind in WEIGHT_KINDS:
            weight_bits = bits[spec.name]
            size_bits += spec.weight_numel * weight_bits
            bops += spec.macs * weight_bits * bits[spec.input_act]
    return size_bits / 8 / 2**20, bops / 1e9


def _table_row(arch: str, scheme: str | Path) -> dict[str, object]:
    found = _resolve(arch, scheme)
    bits = validate_scheme(arch, found.bits, source=str(found.path) if found.path else None)
    size_mib, gbops = scheme_stats(arch, bits)
    paper = None if found.path else PAPER_FIGURES.get(arch, {}).get(found.label)
    return {
        "arch": arch,
        "scheme": found.label,
        "size_mb": round(size_mib, 3),
        "gbops": round(gbops, 2),
        "paper_size_mb": paper[0] if paper else None,
        "paper_gbops": paper[1] if paper else None,
    }


def table_rows(arch: str | None = None, scheme: str | Path | None = None) -> list[dict[str, object]]:
    """Rows (dicts keyed by :data:`TABLE_COLUMNS`) of size MiB / GBOPS vs. published figures.

    No arguments: every scheme of every arch. ``arch``: its schemes. ``arch`` and ``scheme``:
    that one row (a JSON path's ``scheme`` is the file stem). Paper fields are ``None`` when
    HAWQ-V3 published no figure (always for JSON files).
    """
    if scheme is not None and arch is None:
        raise HawqError("a scheme needs an arch (-a/--arch)")
    if arch is not None:
        arch_info(arch)  # unknown arch -> HawqError before anything else
    archs = [arch] if arch is not None else list(ARCHS)
    return [
        _table_row(name, entry)
        for name in archs
        for entry in ([scheme] if scheme is not None else list_schemes(name))
    ]


def table_csv(rows: list[dict[str, object]]) -> str:
    """``rows`` as CSV text with a :data:`TABLE_COLUMNS` header (``None`` -> empty field)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
