"""hawq: integer-only quantization (QAT and PTQ) with bit-exact integer export.

The Python API (:mod:`hawq.api`) is importable from the package: ``hawq.quantize``,
``hawq.prepare_qat``, ``hawq.export_program``, ``hawq.run_reference``, ``hawq.QuantPoint`` (an
explicit quantizer in a float model, :class:`hawq.capture.QuantPoint`) and ``hawq.SignPoint`` (where a
binary conv's 1-bit activation goes: hardtanh in float, :class:`hawq.models.binary.SignPoint`). It is loaded on first use, so
``import hawq.numerics`` and the command-line tools do not pay for it.
"""
__all__ = ["quantize", "prepare_qat", "export_program", "run_reference", "QuantPoint", "SignPoint"]


def __getattr__(name: str):
    if name in __all__:
        from hawq import api
        return getattr(api, name)
    raise AttributeError(f"module 'hawq' has no attribute {name!r}")
