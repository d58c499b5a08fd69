"""Post-training quantization into the integer artifact QAT produces.

The pipeline (:func:`hawq.ptq.pipeline.quantize`): an FP checkpoint is wrapped as a quantized model
with BN folded; activation ranges come from calibration observers (:mod:`.observers`, MQBench's);
weight grids from weight quantizers (:mod:`.weights`); integer weights from round-to-nearest or a
reconstruction of the rounding (:mod:`.recon`: AdaRound, BRECQ, QDrop). The result is an ordinary
quantized checkpoint: ``quant_train.py --resume ... -e``, ``hawq.verify`` and ``tvm_benchmark.verify``
take it like a QAT one. ``python -m hawq.ptq`` is the command line (:mod:`.cli`).
"""
