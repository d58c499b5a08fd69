"""Every model file on disk: atomic writes, safe loads, and one classification of what a file is.

:func:`read` loads a file once (``torch.load(..., weights_only=True)``: a file that needs pickled
code or arbitrary objects is refused) and classifies it into a :class:`ModelFile`:

========================  =======================================================================
``Kind.FP``               our floating-point checkpoint (``--quant-scheme fp32`` run) or a bare FP state_dict
``Kind.QAT``              our quantized checkpoint (``checkpoint.pth.tar`` / ``model_best.pth.tar``)
``Kind.HAWQ``             a HAWQ-V3 ``checkpoint.pth.tar`` (``module.`` keys, no numeric profile recorded)
``Kind.ARTIFACT``         an integer artifact (``quantized_checkpoint.pth.tar`` with ``graph``)
``Kind.HAWQ_QUANTIZED``   HAWQ-V3's ``quantized_checkpoint.pth.tar``: its five dicts, no graph
========================  =======================================================================

The CLIs and the model factory take the :class:`ModelFile`; nothing else opens checkpoints.
Every problem becomes a one-line :class:`HawqError`.
"""
from __future__ import annotations

import enum
import os
import pickle
import warnings
from dataclasses import dataclass

import torch

from hawq.errors import HawqError
from hawq.fileio import atomic_write
from hawq.quant.config import HAWQ_README, QuantConfig

__all__ = ["ARTIFACT_FORMAT", "HAWQ_KEYS", "OPTIONAL_KEYS", "DP_PREFIX", "save_atomic", "load_file",
           "strip_prefix", "Kind", "ModelFile", "read", "checkpoint_state", "state_dict_of",
           "is_quantized_state", "load_into"]

#: The integer artifact format written by :mod:`hawq.export`.
ARTIFACT_FORMAT = "hawq-integer-graph/1"
#: HAWQ-V3's five dicts of ``quantized_checkpoint.pth.tar`` (our artifacts carry them too).
HAWQ_KEYS = ("weight_integer", "bias_integer", "convbn_scaling_factor", "fc_scaling_factor", "act_scaling_factor")
#: Keys of ours that HAWQ-V3 checkpoints do not carry; they keep their defaults when absent. The
#: learned quantizer parameters are among them: absent (a minmax checkpoint resumed with
#: --quantizer lsq/pact) they start from the checkpoint's ranges at the first training step.
OPTIONAL_KEYS = ("act_zero_point", "fold_step", "fixed_weight_scale", "act_step", "act_clip", "weight_step")

#: Prefix DataParallel adds to every key; HAWQ-V3 checkpoints carry it.
DP_PREFIX = "module."


def save_atomic(obj, path: str) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write, suffix=".pth.tar")


def load_file(path: str) -> dict:
    """Load a checkpoint dict safely; raise HawqError (one line) on any problem."""
    if not os.path.isfile(path):
        raise HawqError(f"checkpoint '{path}' does not exist")
    try:
        with warnings.catch_warnings():      # garbage bytes make torch warn about odd pickle protocols
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                   # garbage raises anything: IndexError, KeyError, Unpickling...
        text = str(e).strip()
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in text:
            raise HawqError(f"checkpoint '{path}' contains pickled code or objects; refusing to load it "
                            f"(only tensors and plain containers are accepted)") from None
        detail = text.splitlines()[0][:160] if text else type(e).__name__
        raise HawqError(f"checkpoint '{path}' is corrupt or truncated ({detail})") from None
    if not isinstance(obj, dict):
        raise HawqError(f"checkpoint '{path}' is not a hawq/HAWQ checkpoint (top level is {type(obj).__name__})")
    return obj


def strip_prefix(state_dict: dict) -> dict:
    """Drop DataParallel's 'module.' prefix (HAWQ-V3 checkpoints) when every key has it."""
    if state_dict and all(k.startswith(DP_PREFIX) for k in state_dict):
        return {k[len(DP_PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


class Kind(enum.Enum):
    FP = "floating-point checkpoint"
    QAT = "quantized checkpoint"
    HAWQ = "HAWQ-V3 checkpoint"
    ARTIFACT = "integer artifact"
    HAWQ_QUANTIZED = "HAWQ-V3 quantized_checkpoint"


@dataclass(frozen=True)
class ModelFile:
    """One model file, read and classified once.

    ``raw`` is the loaded dict; ``state_dict`` the model state (DataParallel prefix stripped) for
    FP/QAT/HAWQ checkpoints, for HAWQ_QUANTIZED the union of its five dicts, None for artifacts.
    ``config`` is the recorded :class:`QuantConfig` (HAWQ files: HAWQ-V3's README settings in
    profile hawq; legacy files of ours: rebuilt from their saved args), None for FP checkpoints.
    ``arch``, ``quant_scheme``, ``bit_config``, ``num_classes``, ``dataset`` are None when unrecorded;
    so is ``input_size`` (the square input side in pixels the model was trained / exported at).
    """

    path: str
    kind: Kind
    raw: dict
    state_dict: dict | None
    arch: str | None
    quant_scheme: str | None
    bit_config: dict | None
    num_classes: int | None
    dataset: str | None
    config: QuantConfig | None
    input_size: int | None = None

    @property
    def quantized(self) -> bool:
        return self.kind is not Kind.FP

    @property
    def numerics_inferred(self) -> bool:
        """True when the numeric profile was not recorded but inferred from HAWQ-V3's layout."""
        return self.kind in (Kind.HAWQ, Kind.HAWQ_QUANTIZED)

    def describe(self) -> str:
        return f"'{self.path}' ({self.kind.value})"


def read(path: str) -> ModelFile:
    """Load ``path`` once and classify it; HawqError (one line) for anything that is not a model file."""
    raw = load_file(path)
    if raw.get("format") == ARTIFACT_FORMAT or "graph" in raw:
        if raw.get("format") != ARTIFACT_FORMAT or not isinstance(raw.get("graph"), dict):
            raise HawqError(f"'{path}' is not an integer artifact of format {ARTIFACT_FORMAT}")
        cfg = raw.get("quant_config")
        return ModelFile(path, Kind.ARTIFACT, raw, None, _str(raw.get("arch")), _str(raw.get("quant_scheme")),
                         raw.get("bit_config") if isinstance(raw.get("bit_config"), dict) else None, None,
                         _str(raw.get("dataset")),
                         QuantConfig.from_dict(cfg, path) if isinstance(cfg, dict)
                         else QuantConfig(numerics=str(raw.get("numerics", "exact"))),
                         _size(raw.get("input_shape", [None])[-1]))
    if all(k in raw for k in HAWQ_KEYS) and "state_dict" not in raw:
        sd = {}
        for key in HAWQ_KEYS:
            if not isinstance(raw[key], dict) or not all(isinstance(v, torch.Tensor) for v in raw[key].values()):
                raise HawqError(f"'{path}' looks like a HAWQ-V3 quantized_checkpoint but '{key}' is not a dict of tensors")
            sd.update(raw[key])
        sd = strip_prefix(sd)
        return ModelFile(path, Kind.HAWQ_QUANTIZED, raw, sd, None, None, None, _num_classes(sd), None, HAWQ_README)
    sd = state_dict_of(raw, path)
    arch, scheme = _str(raw.get("arch")), _str(raw.get("quant_scheme"))
    bits = raw.get("bit_config") if isinstance(raw.get("bit_config"), dict) else None
    num_classes = int(raw["num_classes"]) if "num_classes" in raw else _num_classes(sd)
    dataset, size = _str(raw.get("dataset")), _size(raw.get("input_size"))
    if not is_quantized_state(sd):
        return ModelFile(path, Kind.FP, raw, sd, arch, scheme, None, num_classes, dataset, None, size)
    raw_sd = raw.get("state_dict", raw)
    hawq_layout = all(k.startswith(DP_PREFIX) for k in raw_sd) and "quant_config" not in raw and "args" not in raw
    if hawq_layout:
        sd, per_channel = _hawq_weight_scales(sd)
        return ModelFile(path, Kind.HAWQ, raw, sd, arch, None, None, num_classes, None,
                         HAWQ_README.replace(per_channel=per_channel))
    cfg = raw.get("quant_config")
    config = (QuantConfig.from_dict(cfg, path) if isinstance(cfg, dict)
              else QuantConfig.from_legacy_args(raw.get("args")))
    return ModelFile(path, Kind.QAT, raw, sd, arch, scheme, bits, num_classes, dataset, config, size)


def _hawq_weight_scales(sd: dict) -> tuple[dict, bool]:
    """HAWQ-V3 trained with its ``--channel-wise`` flag (which turns per-channel OFF) stores 0-dim weight
    scales; spread them over the output channels (our buffers are [C_out]) and report per-tensor."""
    out, per_channel = dict(sd), True
    for k, v in sd.items():
        if k.endswith(("convbn_scaling_factor", "fc_scaling_factor")) and v.numel() == 1:
            w = sd.get(k.rsplit(".", 1)[0] + ".weight_integer")
            if w is not None and w.shape[0] > 1:
                out[k] = v.reshape(1).expand(w.shape[0]).clone()
                per_channel = False
    return out, per_channel


def _str(v) -> str | None:
    return v if isinstance(v, str) else None


def _size(v) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def checkpoint_state(model: torch.nn.Module, *, arch: str, quant_scheme: str, num_classes: int, dataset: str,
                     input_size: int, bit_config: dict | None, config: QuantConfig | None, epoch: int = 0,
                     best_acc1: float = 0.0, **extra) -> dict:
    """The dict every checkpoint of ours holds (QAT from quant_train.py, PTQ from hawq.ptq, FP runs:
    ``bit_config``/``config`` None), written with :func:`save_atomic` and read back by :func:`read`.
    ``extra``: plain values of the writer's own (``optimizer``, ``args``, ``ptq``)."""
    return {"epoch": epoch, "arch": arch, "quant_scheme": quant_scheme, "state_dict": model.state_dict(),
            "best_acc1": best_acc1, "num_classes": num_classes, "dataset": dataset, "input_size": int(input_size),
            "bit_config": None if bit_config is None else dict(bit_config),
            "quant_config": None if config is None else config.to_dict(), **extra}


def _num_classes(sd: dict) -> int | None:
    """Classes of a model state: rows of the output layer (HAWQ files do not record the count)."""
    for key in ("quant_output.weight", "output.weight", "quant_output.weight_integer"):
        if key in sd and sd[key].dim() == 2:
            return int(sd[key].shape[0])
    return None


def state_dict_of(ckpt: dict, path: str) -> dict:
    """The model state dict inside a checkpoint: ``ckpt['state_dict']``, ``ckpt['model']`` (timm's,
    torchvision's reference scripts) or a bare state dict."""
    sd = ckpt.get("state_dict", ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt)
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise HawqError(f"checkpoint '{path}' has no model state_dict (keys: {sorted(ckpt)[:6]})")
    return strip_prefix(sd)


def is_quantized_state(sd: dict) -> bool:
    """True for a QAT (quantized model) state dict, False for a floating-point one."""
    return any(k.endswith("act_scaling_factor") or k.endswith("convbn_scaling_factor") for k in sd)


def load_into(model: torch.nn.Module, sd: dict, path: str, optional_suffixes: tuple[str, ...] = ()) -> None:
    """Load ``sd`` into ``model`` requiring every key to match in name and shape.

    Keys of the model ending with one of ``optional_suffixes`` (our additions to HAWQ's layout)
    may be absent from ``sd`` and keep their current values.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(optional_suffixes)]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise HawqError(f"checkpoint '{path}' does not fit this model ({what}; "
                        f"{len(missing)} missing, {len(unexpected)} unexpected keys) - wrong arch or scheme?")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise HawqError(f"checkpoint '{path}' does not fit this model: '{k}' has shape {tuple(v.shape)}, "
                            f"model expects {tuple(own[k].shape)} - wrong arch or number of classes?")
    model.load_state_dict(sd, strict=False)
