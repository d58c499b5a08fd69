"""The integer program to compile: from a QAT checkpoint or an integer artifact, plus its runner.

``load_program(path)`` accepts what users have on disk (classified once by :func:`hawq.checkpoint.read`):

- a QAT checkpoint written by ``quant_train.py`` (``checkpoint.pth.tar`` / ``model_best.pth.tar``):
  the integer graph is exported in memory from the model's eval path;
- an integer artifact (``quantized_checkpoint.pth.tar``, format ``hawq-integer-graph/1``);
- HAWQ-V3's ``checkpoint.pth.tar`` or ``quantized_checkpoint.pth.tar`` with ``scheme`` (and ``arch``
  for the latter), evaluated in numeric profile ``hawq``.

Anything else (an FP checkpoint, a foreign file) is a :class:`HawqError` naming what the file is.
"""
from __future__ import annotations

from dataclasses import dataclass

from hawq import checkpoint as C
from hawq.data import resolve_dataset
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.models.factory import resolve_input_size
from hawq.models.restore import quant_model_from


__all__ = ["Program", "load_program"]

@dataclass
class Program:
    """An integer graph and what it was trained as."""
    graph: dict
    input_chw: tuple[int, int, int]
    arch: str
    scheme: str
    dataset: str
    bit_config: dict
    source: str
    numerics: str = "exact"

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, *self.input_chw)


def load_program(path: str, arch: str | None = None, scheme: str | None = None,
                 dataset: str | None = None, data: str | None = None, input_size: int | None = None) -> Program:
    """The integer program in ``path``; ``arch``/``scheme`` for HAWQ-V3 files. A checkpoint is
    exported at ``input_size`` pixels (default: the recorded size, else the default of ``dataset``:
    the recorded one; for HAWQ-V3 files imagenet; else as :func:`hawq.data.resolve_dataset` with the
    ``--data`` directory ``data``); an artifact's input shape is fixed."""
    f = C.read(path)
    if f.kind is C.Kind.ARTIFACT:
        if input_size is not None and input_size != f.input_size:
            raise HawqError(f"{f.describe()} was exported for {f.input_size}px inputs; --input-size {input_size} "
                            "needs the checkpoint it was exported from")
        art = f.raw
        return Program(art["graph"], tuple(int(d) for d in art["input_shape"]), str(art.get("arch")),
                       str(art.get("quant_scheme")), f.dataset or "fashion-mnist", dict(f.bit_config or {}), path,
                       f.config.numerics)
    dataset = resolve_dataset(dataset, data, f.dataset or ("imagenet" if f.numerics_inferred else None))
    s = resolve_input_size(input_size, dataset, arch or f.arch, f.input_size)
    model, bits = quant_model_from(f, arch=arch, scheme=scheme, input_size=s)
    art = export_integer(model, (3, s, s))
    return Program(art["graph"], (3, s, s), model.arch, str(f.quant_scheme or scheme), dataset, dict(bits), path,
                   model.config.numerics)
