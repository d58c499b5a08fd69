"""Shared fixtures and helpers: small calibrated quantized models, the released checkpoints, TVM
compile-and-run, subprocess runners for the command-line entry points."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(2)

#: This interpreter's version, as the GPU bundle's runtime copy names it ("3.11").
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
#: The released FP resnet20_cifar10 checkpoint (absolute path).
RELEASED_FP = os.path.join(ROOT, "checkpoints", "resnet20_cifar10_fp32.pth.tar")
#: Whether the Debian package dataset-fashion-mnist is installed (``make setup`` installs it).
HAVE_FMNIST = os.path.exists("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed "
                                                          "(make setup installs it)")
#: A quant_train.py run on a tiny Fashion-MNIST subset (append to the arguments).
TINY_TRAIN = ["--data-percentage", "0.01", "--eval-limit", "300", "-b", "64", "--no-progress",
              "--lr-schedule", "cosine"]


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running stats (seeded)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) * 0.8 + 0.4
            m.bias.data = torch.randn(c, generator=g) * 0.2
            m.running_mean = torch.randn(c, generator=g) * 0.2
            m.running_var = torch.rand(c, generator=g) + 0.5


@torch.no_grad()
def calibrate(model: torch.nn.Module, shape, batches: int = 2, seed: int = 0) -> torch.Tensor:
    """Run training-mode forwards (activation ranges update, no gradient) and return a probe batch."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(batches):
        model(torch.randn(*shape, generator=g))
    model.eval()
    return torch.randn(*shape, generator=g) * 1.5


def build_calibrated(arch: str, scheme: str, num_classes: int, shape, **quant_args):
    from hawq.bit_config import load_scheme
    from hawq.models.factory import fp_model, quant_model
    from hawq.quant.config import QuantConfig
    torch.manual_seed(0)
    fp = fp_model(arch, num_classes)
    randomize_bn(fp)
    model = quant_model(arch, load_scheme(arch, scheme), num_classes, fp=fp,
                        config=QuantConfig(**{"fix_BN": True, **quant_args}))
    probe = calibrate(model, shape)
    return model, probe


# --------------------------------------------------------------------------- TVM
def tvm_runner(graph: dict, shape, target: str = "llvm", *, threads: int | None = 2, all_outputs: bool = False,
               fast: bool | None = None, isa: str | None = None, emulate: bool = False):
    """``tvm_benchmark.compile.compile_program(graph, shape, target, threads, ...)`` loaded into a
    ``tvm_benchmark.runtime.Runner`` with static batch ``shape[0]`` (bigger inputs run in chunks)
    on the device the program runs on: the CPU for ``llvm`` and for an ``emulate``d ``cuda``
    program, else the GPU. ``threads``: the llvm target's cores (the tests' 2; None: this machine's
    count, what an emulated ``cuda`` compile gets by default; a real ``cuda`` target ignores it).
    The ``Built`` is kept as ``runner.built`` (executable, target, ISA) for tests that inspect it.
    TVM is imported here, so test modules that never call this need no TVM."""
    import tvm
    from tvm_benchmark.compile import compile_program
    from tvm_benchmark.runtime import Runner
    built = compile_program(graph, tuple(shape), target, threads, all_outputs=all_outputs, fast=fast, isa=isa,
                            emulate=emulate)
    device = tvm.cpu(0) if target == "llvm" or emulate else tvm.cuda(0)
    runner = Runner(built.executable, device, shape[0], built.isa_name)
    runner.built = built
    return runner


def tvm_outputs(graph: dict, x, target: str = "llvm", **kwargs):
    """``graph`` compiled for ``x``'s shape (see :func:`tvm_runner`) run on ``x``: NumPy int64
    (a list of them with ``all_outputs``)."""
    return tvm_runner(graph, x.shape, target, **kwargs)(x)


def corrupt_requant(graph: dict, index: int) -> tuple[dict, str]:
    """A copy of ``graph`` whose ``index``-th requant has a wrong (still valid dyadic, >= 2^30)
    multiplier on channel 0, and that node's name: what ``--per-layer`` must name."""
    import copy
    victim = [n for n in graph["nodes"] if n["op"] == "requant"][index]
    bad = copy.deepcopy(graph)
    node = next(n for n in bad["nodes"] if n["name"] == victim["name"] and n["op"] == "requant")
    node["multiplier"] = node["multiplier"].clone()
    node["multiplier"][0] -= 1 << 26
    return bad, victim["name"]


# --------------------------------------------------------------------------- subprocesses, files
def cli(*args: str, cwd=ROOT, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python *args`` in a child process from ``cwd`` (text output captured). ``env``: the child's
    whole environment (default: this one with the repository on PYTHONPATH)."""
    if env is None:
        env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_bundle(bundle, out, *, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """A GPU bundle's ``bash run.sh OUT`` from ``/``, as on the GPU machine: this environment without
    PYTHONPATH and TVM_LIBRARY_PATH (the bundle brings its own TVM runtime), plus ``PYTHON`` (this
    interpreter) and ``env`` (``HAWQ_BUNDLE_*`` settings)."""
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TVM_LIBRARY_PATH")}
    e.update(PYTHON=sys.executable, **env)
    return subprocess.run(["bash", os.path.join(bundle, "run.sh"), str(out)], env=e, cwd="/", capture_output=True,
                          text=True, timeout=timeout)


def csv_rows(path) -> list[dict]:
    """The rows of a CSV file with a header line, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def small_model():
    """resnet20_cifar10 uniform8, calibrated on random data, plus a probe batch [4,3,32,32]."""
    return build_calibrated("resnet20_cifar10", "uniform8", 10, (4, 3, 32, 32))


class UserBinary(torch.nn.Module):
    """A user's binary net: the stem, then two binary convs behind hawq.SignPoint, a shortcut each."""

    def __init__(self):
        super().__init__()
        import hawq
        self.stem, self.bn0 = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16)
        self.a1, self.c1, self.b1 = hawq.SignPoint(), torch.nn.Conv2d(16, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16)
        self.a2, self.c2, self.b2 = hawq.SignPoint(), torch.nn.Conv2d(16, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = self.b1(self.c1(self.a1(x))) + x
        x = self.b2(self.c2(self.a2(x))) + x
        return self.fc(x.mean((2, 3)))


def train_steps(model: torch.nn.Module, optimizer, steps: int, shape=(8, 3, 32, 32), classes: int = 10):
    """``steps`` optimizer steps of ``model`` in train mode on one random batch of ``shape`` (drawn
    from the current RNG state); returns the model in eval mode."""
    model.train()
    x, y = torch.randn(*shape), torch.randint(0, classes, (shape[0],))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
