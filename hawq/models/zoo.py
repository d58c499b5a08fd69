"""A user's own model as an arch: ``torchvision:NAME``, ``timm:NAME`` or ``path/to/file.py:FUNCTION``.

Such an *arch spec* goes wherever ``-a`` goes. The float model comes from the builder (torchvision's
with ``weights=None``; offline, pretrained weights come from ``--pretrained PATH``), and its
quantized model is captured from its torch.fx graph (:mod:`hawq.capture`), so layer names are the
model's own module paths. Canonical input size (MACs/BOPS, the traced inventory): 224 for
torchvision and timm models, 32 for a user's file.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import sys
from typing import Callable

import torch.nn as nn

from hawq.errors import HawqError

__all__ = ["is_spec", "spec_builder", "spec_input_size", "build"]

_PREFIXES = ("torchvision:", "timm:")


def is_spec(arch: str) -> bool:
    """Whether ``arch`` names a model by builder (``torchvision:resnet18``) or file (``net.py:build``)."""
    return arch.startswith(_PREFIXES) or (".py:" in arch)


def spec_input_size(arch: str) -> int:
    return 32 if ".py:" in arch and not arch.startswith(_PREFIXES) else 224


@functools.lru_cache(maxsize=None)
def spec_builder(arch: str) -> Callable[..., nn.Module]:
    """The function that builds ``arch``'s float model; a bad spec raises a one-line HawqError."""
    kind, _, name = arch.partition(":")
    if kind == "torchvision":
        import torchvision
        names = torchvision.models.list_models(module=torchvision.models)
        if name not in names:
            raise HawqError(f"unknown torchvision classification model {name!r} (torchvision "
                            f"{torchvision.__version__} has {len(names)}, e.g. resnet18, mobilenet_v2)")
        return functools.partial(torchvision.models.get_model, name, weights=None)
    if kind == "timm":
        try:
            import timm
        except ImportError:
            raise HawqError(f"{arch}: timm is not installed (pip install timm)") from None
        if not timm.is_model(name):
            raise HawqError(f"unknown timm model {name!r}")
        return functools.partial(timm.create_model, name, pretrained=False)
    path, _, func = arch.rpartition(":")
    return _file_builder(path, func)


def _file_builder(path: str, func: str) -> Callable[..., nn.Module]:
    if not os.path.isfile(path):
        raise HawqError(f"model file {path!r}: no such file")
    mod_name = "hawq_user_model_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module          # pickling, dataclasses and fx need the module findable
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - user code can raise anything
        del sys.modules[mod_name]
        line = (str(e).strip().splitlines() or [""])[0]
        raise HawqError(f"model file {path!r} raised on import: {type(e).__name__}: {line}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise HawqError(f"model file {path!r} has no function {func!r}")
    return fn


def build(arch: str, num_classes: int | None = None) -> nn.Module:
    """The float model of ``arch``; ``num_classes`` is passed when the builder takes it."""
    fn = spec_builder(arch)
    kwargs = {}
    if num_classes is not None and _takes(fn, "num_classes"):
        kwargs["num_classes"] = num_classes
    try:
        model = fn(**kwargs)
    except HawqError:
        raise
    except Exception as e:  # noqa: BLE001 - user code
        line = (str(e).strip().splitlines() or [""])[0]
        raise HawqError(f"{arch}: building the model raised {type(e).__name__}: {line}") from None
    if not isinstance(model, nn.Module):
        raise HawqError(f"{arch}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _takes(fn, arg: str) -> bool:
    if isinstance(fn, functools.partial):
        return True                      # torchvision / timm builders take num_classes
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
