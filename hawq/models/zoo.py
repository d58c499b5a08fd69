"""A model by builder as an arch: ``torchvision:NAME``, ``timm:NAME``, ``path/to/file.py:FUNCTION``, or
``hawq:NAME`` (this project's own float models: the Bi-Real binary ResNets of :mod:`hawq.models.binary`).

Such an *arch spec* goes wherever ``-a`` goes. The float model comes from the builder (torchvision's
with ``weights=None``; offline, pretrained weights come from ``--pretrained PATH``), and its
quantized model is captured from its torch.fx graph (:mod:`hawq.capture`), so layer names are the
model's own module paths. Canonical input size (MACs/BOPS, the traced inventory): 224 for
torchvision and timm models, 32 for a user's file and for ``hawq:`` models.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import sys
from typing import Callable

import torch
import torch.nn as nn

from hawq.errors import HawqError

__all__ = ["is_spec", "spec_builder", "spec_input_size", "build", "build_pretrained", "output_classes"]

_PREFIXES = ("torchvision:", "timm:", "hawq:")


def is_spec(arch: str) -> bool:
    """Whether ``arch`` names a model by builder (``torchvision:resnet18``) or file (``net.py:build``)."""
    return arch.startswith(_PREFIXES) or (".py:" in arch)


def spec_input_size(arch: str) -> int:
    if arch.startswith("hawq:"):
        from hawq.models.binary import INPUT_SIZES
        return INPUT_SIZES.get(arch.partition(":")[2], 32)
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
    if kind == "hawq":
        from hawq.models.binary import MODELS
        if name not in MODELS:
            raise HawqError(f"unknown model hawq:{name}; this project's own: {', '.join('hawq:' + m for m in MODELS)}")
        return MODELS[name]
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


def build_pretrained(arch: str, num_classes: int) -> nn.Module:
    """``--pretrained`` without a path: the builder's published weights (torchvision's ``DEFAULT``,
    timm's ``pretrained=True``; downloaded, so offline it is a one-line error), the last Linear
    replaced by a fresh one when ``num_classes`` differs."""
    kind, _, name = arch.partition(":")
    if kind not in ("torchvision", "timm"):
        raise HawqError(f"{arch}: --pretrained needs a PATH to a state dict for a model from a file")
    spec_builder(arch)
    try:
        if kind == "torchvision":
            import torchvision
            model = torchvision.models.get_model(name, weights="DEFAULT")
        else:
            import timm
            model = timm.create_model(name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - offline: URLError, HTTPError, ... from the downloader
        raise HawqError(f"cannot download the pretrained weights of {arch} ({type(e).__name__}); this "
                        "machine may be offline - pass --pretrained PATH to a state dict instead") from None
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1][1].out_features != num_classes:
        path, old = linears[-1]
        parent = model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else model
        setattr(parent, path.rsplit(".", 1)[-1], nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def output_classes(arch: str, size: int, *fallback_sizes: int) -> int:
    """Outputs of ``arch``'s model on one ``size``×``size`` image (its class count); when it does not
    run at ``size``, each of ``fallback_sizes`` is tried before the one-line HawqError."""
    model = build(arch).eval()
    for alt in fallback_sizes:
        try:
            return _classes_at(arch, model, size)
        except HawqError:
            size = alt
    return _classes_at(arch, model, size)


def _classes_at(arch: str, model: nn.Module, size: int) -> int:
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        params = [None]
    if len(params) != 1:
        raise HawqError(f"{arch}: forward takes {len(params)} inputs; an image classifier takes one")
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size))
    except Exception as e:  # noqa: BLE001 - user code
        line = (str(e).strip().splitlines() or [""])[0]
        raise HawqError(f"{arch}: does not run on a 1x3x{size}x{size} input ({type(e).__name__}: {line})") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise HawqError(f"{arch}: returns {getattr(out, 'shape', type(out).__name__)}, not [batch, classes] logits")
    return int(out.shape[1])
