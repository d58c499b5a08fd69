"""Shared CLI plumbing: one-line errors instead of tracebacks, and the arguments many tools share.

Every entry point (``quant_train.py``, ``bit_config.py``, ``python -m hawq.X``, ``python -m
tvm_benchmark.X``) is written the same way::

    @one_line_errors
    def main(argv=None) -> int: ...

    if __name__ == "__main__":
        run_main(main)

so a :class:`HawqError` (or a bad path) is ``error: ...`` on one line of stderr with exit status 2,
also when ``main`` is called in-process (tests, ``make demo``), and Ctrl-C is exit status 130.
Argparse usage errors keep argparse's own form (usage + message, exit 2).

``-a/--arch`` (:func:`add_arch_arg`) is checked while parsing, with :func:`hawq.models.layers.arch_info`'s
message; ``--dataset`` defaults through :func:`resolve_dataset` everywhere.
"""
from __future__ import annotations

import argparse
import functools
import sys
from typing import NoReturn

from hawq.data import DATASETS, resolve_dataset
from hawq.errors import HawqError
from hawq.models.factory import resolve_input_size
from hawq.models.archs import ARCHS, arch_info

#: ``--dataset`` help of tools whose default comes from the checkpoint they read.
RECORDED_DATASET_HELP = "default: the dataset the checkpoint was trained on"
_DATASET_HELP = "default: imagenet when --data is given, else fashion-mnist"


def one_line_errors(main):
    """Run ``main``; a HawqError (or a bad/unreadable path) prints ``error: ...`` on one line, exit 2;
    KeyboardInterrupt prints ``error: interrupted``, exit 130."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except HawqError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError) as e:
            print(f"error: {e.strerror or e}: {e.filename}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
    wrapper.one_line_errors = True
    return wrapper


def run_main(main, argv: list[str] | None = None) -> NoReturn:
    """``if __name__ == "__main__": run_main(main)``: run ``main`` with one-line errors (wrapping it
    unless it is already decorated) and exit with its return value when that is an int, else 0."""
    if not getattr(main, "one_line_errors", False):
        main = one_line_errors(main)
    rc = main(argv)
    sys.exit(rc if isinstance(rc, int) and not isinstance(rc, bool) else 0)


def console_script(main) -> functools.partial:
    """A program's ``[project.scripts]`` entry (``cli = console_script(main)``): :func:`run_main` of
    ``main`` on ``sys.argv``."""
    return functools.partial(run_main, main)


# --------------------------------------------------------------------------- shared arguments
def arch_name(text: str) -> str:
    """argparse ``type`` of -a/--arch: ``text`` when it is a supported arch, else the one-line
    HawqError ``unknown arch ...`` (raised through argparse, so no usage dump)."""
    arch_info(text)
    return text


def add_arch_arg(p: argparse.ArgumentParser, default: str | list[str] | None = "resnet20_cifar10", *,
                 nargs: str | None = None, required: bool = False, help: str | None = None) -> None:
    """``-a/--arch``, validated against :data:`hawq.models.layers.ARCHS` while parsing."""
    kw = {"nargs": nargs} if nargs else {}
    if required:
        kw["required"] = True
    else:
        kw["default"] = default
    p.add_argument("-a", "--arch", type=arch_name, help=help or f"one of: {', '.join(ARCHS)}; or any CNN as "
                   "torchvision:NAME, timm:NAME or path/to/file.py:FUNCTION (captured with torch.fx)", **kw)


def add_quant_scheme_arg(p: argparse.ArgumentParser, default: str | list[str] | None = None, *,
                         nargs: str | None = None, help: str | None = None) -> None:
    """``--quant-scheme`` (names, HAWQ aliases or JSON paths; checked against the arch by
    :func:`hawq.bit_config.load_scheme` once the arch is known)."""
    kw = {"nargs": nargs} if nargs else {}
    p.add_argument("--quant-scheme", default=default,
                   help=help or "bit_config scheme name, HAWQ alias, or a JSON file", **kw)


def add_data_args(p: argparse.ArgumentParser, *, data_help: str | None = None,
                  dataset_help: str | None = None) -> None:
    """``--data DIR`` and ``--dataset {fashion-mnist,imagenet}`` (default None: resolve it with
    :func:`resolve_dataset`)."""
    p.add_argument("--data", metavar="DIR", default=None,
                   help=data_help or "ImageFolder root with train/ and val/ (imagenet), or a directory of "
                                     "the four Fashion-MNIST IDX files")
    p.add_argument("--dataset", default=None, choices=list(DATASETS), help=dataset_help or _DATASET_HELP)


def add_input_size_arg(p: argparse.ArgumentParser, default_help: str | None = None) -> None:
    """``--input-size N`` (default None: resolve it with :func:`resolve_input_size`)."""
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="square input side in pixels that the model is traced, calibrated, trained and exported "
                        "at (default: " + (default_help or "224 with --data, 32 on the embedded dataset, "
                                           "96 for inceptionv3") + ")")


__all__ = ["one_line_errors", "run_main", "console_script", "arch_name", "add_arch_arg", "add_quant_scheme_arg", "add_data_args",
           "add_input_size_arg", "resolve_dataset", "resolve_input_size", "RECORDED_DATASET_HELP"]
