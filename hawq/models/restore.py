"""Rebuild the quantized model a file holds: our QAT/PTQ checkpoints and HAWQ-V3's files
(classified by :func:`hawq.checkpoint.read`), with the bit_config they record or a named scheme."""
from __future__ import annotations

from hawq import checkpoint as C
from hawq.bit_config import load_scheme
from hawq.errors import HawqError
from hawq.models.factory import fp_model_for_state, quant_model
from hawq.quant.config import QuantConfig

__all__ = ["quant_model_from", "load_quant_checkpoint"]


def quant_model_from(f: C.ModelFile, arch: str | None = None, scheme: str | None = None,
                     config: QuantConfig | None = None, device="cpu", input_size: int | None = None):
    """Rebuild the quantized model a quantized file holds, in eval mode: (model, bit_config).
    ``input_size`` (default: the file's recorded one) is what a captured model is traced at.

    Ours record arch, bit_config and config; HAWQ-V3 files need ``scheme`` (and ``arch`` for its
    quantized_checkpoint), and are built in profile hawq unless ``config`` says otherwise. A HAWQ
    quantized_checkpoint carries only integers and scales: the model evaluates those as stored.
    """
    if f.kind is C.Kind.FP:
        raise HawqError(f"{f.describe()} holds no integer data; give a QAT checkpoint from quant_train.py "
                        "or its quantized_checkpoint.pth.tar")
    if f.kind is C.Kind.ARTIFACT:
        raise HawqError(f"{f.describe()} holds an integer graph, not a model; give the checkpoint it was exported from")
    arch = arch or f.arch
    if f.arch is not None and arch != f.arch:
        raise HawqError(f"checkpoint '{f.path}' is for arch '{f.arch}', not '{arch}'")
    if arch is None:
        raise HawqError(f"{f.describe()} does not record its arch; pass -a/--arch")
    bits = f.bit_config
    if bits is None:
        if scheme is None:
            raise HawqError(f"{f.describe()} does not record its bit_config; pass --quant-scheme")
        bits = load_scheme(arch, scheme)
    if f.num_classes is None:
        raise HawqError(f"{f.describe()} lacks an output layer; cannot tell the number of classes")
    fp = fp_model_for_state(arch, f.num_classes, f.state_dict) if f.numerics_inferred else None
    model = quant_model(arch, bits, f.num_classes, fp=fp, config=config or f.config,
                        input_size=input_size or f.input_size)
    if f.kind is C.Kind.HAWQ_QUANTIZED:
        model.load_stored_integers(f.state_dict, f.path)
    else:
        C.load_into(model, f.state_dict, f.path, optional_suffixes=C.OPTIONAL_KEYS)
    return model.to(device).eval(), bits


def load_quant_checkpoint(path: str, device="cpu"):
    """Read a quantized checkpoint that records its arch and scheme (ours) and rebuild its model.

    Returns (model in eval mode, :class:`hawq.checkpoint.ModelFile`).
    """
    f = C.read(path)
    model, _ = quant_model_from(f, device=device)
    return model, f
