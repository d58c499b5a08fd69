# Two commands for a fresh machine: `make demo` and `make test` (both run `setup` first).
SHELL      := /bin/bash
PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.hawq-installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PYTHONPATH := $(CURDIR)

.PHONY: setup dataset demo test test-slow hawq-conformance bench ptq-bench layer-latency gpu-bundle release lock clean

setup: $(STAMP) dataset

# Re-installs only when the pins change; a second `make setup` is a no-op.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -c "import torch, torchvision, pytorchcv; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

# The embedded default dataset: Fashion-MNIST from Debian's dataset-fashion-mnist.
dataset:
	@test -f $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz || { \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

demo: setup
	$(PY) -m hawq.apps.demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# Full-size conformance with HAWQ-V3's original code: runs ../shared/hawq_ref/make_ref.py (HAWQ's own
# code, not part of this project) for resnet18/resnet50 x uniform8/uniform4/bops_0.5 at 224x224, then
# compares every QuantAct's integers (about 25 min on 2 cores).
HAWQ_REF ?= ../shared/hawq_ref/make_ref.py
HAWQ_REF_OUT ?= build/hawq_ref
hawq-conformance: setup
	@test -f $(HAWQ_REF) || { echo "error: $(HAWQ_REF) not found (HAWQ_REF=path/to/make_ref.py)"; exit 2; }
	for a in resnet18 resnet50; do test -f $(HAWQ_REF_OUT)/$$a/summary.json || \
	  $(PY) $(HAWQ_REF) $(HAWQ_REF_OUT)/$$a --arch $$a --schemes uniform8 uniform4 bops_0.5 || exit 1; done
	$(PY) -m hawq.apps.conformance $(HAWQ_REF_OUT)/resnet18/resnet18_*/ $(HAWQ_REF_OUT)/resnet50/resnet50_*/
	HAWQ_REF_FULL=$(HAWQ_REF_OUT)/resnet18:$(HAWQ_REF_OUT)/resnet50 $(PY) -m pytest -q -m slow tests/hawq/test_hawq_conformance.py

bench: setup
	$(PY) -m hawq.benchmarks.qat_overhead --quantizer minmax lsq pact dorefa --ddp 2
	$(PY) -m hawq.benchmarks.api --models resnet50 mobilenet_v2 --input-size 224 --images 64
	$(PY) -m hawq.benchmarks.reference -a resnet18 resnet50 -b 1 8 32
	$(PY) -m tvm_benchmark.apps.bench -a resnet18 resnet50 --quant-scheme uniform8 uniform4 bops_0.5 -b 1 8 --threads 2
	$(PY) -m tvm_benchmark.apps.bench -a mobilenetv2_w1 regnetx006 inceptionv3 --quant-scheme uniform8 uniform4 -b 1 8 --threads 2
	$(PY) -m tvm_benchmark.apps.bench -a torchvision:mobilenet_v3_small torchvision:efficientnet_b0 --quant-scheme uniform8 -b 1 --threads 2
	$(PY) -m tvm_benchmark.apps.qdq_vs_ort -a resnet20_cifar10 mobilenetv2_w1 resnet18 -b 1 8 --threads 2
	$(PY) -m tvm_benchmark.apps.bench -a hawq:bireal_resnet18_imagenet --quant-scheme uniform8 binary -b 1 8 --threads 2 --engines tvm-int ort-int8 torch-int8 --isolate
	$(PY) -m tvm_benchmark.apps.binary_kernels

# Post-training quantization table (MQBench's layout): results/ptq.{csv,md}, about 30 min on 2 cores (the NumPy reference is the slow part of verifying).
ptq-bench: setup
	$(PY) -m hawq.benchmarks.ptq -a resnet20_cifar10 --iters 300 --verify-images 100 --no-progress

# Per-layer TVM latency tables for the latency-constrained bit allocation (hawq.mpq --latency-table).
layer-latency: setup
	for a in resnet20_cifar10 resnet18 resnet50; do $(PY) -m tvm_benchmark.apps.layer_latency -a $$a; done

# The GPU bundle (build/gpu-bundle/, run there with `bash build/gpu-bundle/run.sh OUTDIR`): tensor-core
# programs of the released checkpoints and resnet18/resnet50 (uniform8, uniform4, bops_0.5) at batch
# 1/8/64 for CUDA_ARCH, their inputs and reference logits, runtime-only TVM. Fetches tvm_ffi's
# wheel for the GPU machine's Python (3.12) from PyPI once (build/wheels/).
CUDA_ARCH ?= sm_90
gpu-bundle: setup
	$(PY) -m tvm_benchmark.apps.gpu_bundle --out build/gpu-bundle --sm $(CUDA_ARCH) --no-progress

# Re-train the released checkpoints (about an hour on 2 cores) and rewrite checkpoints/MANIFEST.csv.
release: setup
	$(PY) -m hawq.apps.release train
	$(PY) -m hawq.apps.release manifest

# Regenerate constraints.txt from a fresh resolve of pyproject's pins.
lock:
	rm -rf /tmp/hawq-lock && $(PYTHON) -m venv /tmp/hawq-lock
	/tmp/hawq-lock/bin/pip install -q ".[dev]"
	{ echo '# Full transitive pin set for `make setup` (pip install -c constraints.txt). Regenerate with `make lock`.'; \
	  /tmp/hawq-lock/bin/pip freeze | grep -v '^hawq'; } > constraints.txt

clean:
	rm -rf $(VENV) *.egg-info
