"""Checkpoint files: atomic writes, safe loads, HAWQ-V3 layout compatibility.

Every load goes through ``torch.load(..., weights_only=True)``: a file that needs pickled code or
arbitrary objects is refused. Every problem becomes a one-line :class:`HawqError`.
"""
from __future__ import annotations

import os
import pickle
import warnings

import torch

from hawq.errors import HawqError
from hawq.fileio import atomic_write

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


def state_dict_of(ckpt: dict, path: str) -> dict:
    """The model state dict inside a checkpoint: ``ckpt['state_dict']`` or a bare state dict."""
    sd = ckpt.get("state_dict", ckpt)
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
