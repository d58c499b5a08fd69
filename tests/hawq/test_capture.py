"""Any CNN in (issue 27): torchvision builders, a user's file and the Python API go through capture,
QAT eval == NumPy reference == TVM llvm, integer for integer; unsupported models stop in one line."""
from __future__ import annotations

import copy
import functools
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import hawq
from hawq import checkpoint as C
from conftest import ROOT, cli, randomize_bn, tvm_outputs
from hawq.bit_config import load_scheme, table_rows
from hawq.capture import capture
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.export_onnx import OnnxProgram, to_onnx
from hawq.models.factory import fp_model, quant_model
from hawq.reference import run_graph

SIDE = 32

#: torchvision builders that need no new numerics (issue 27's list; vgg/alexnet need a spatial
#: flatten, googlenet/inception_v3/squeezenet ceil-mode pools: not yet).
FAST = [("resnet18", "uniform4"), ("mobilenet_v2", "uniform8"), ("mnasnet0_5", "uniform4"), ("squeezenet1_1", "uniform8")]
SLOW = [(n, s, SIDE) for n in ("resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "regnet_x_400mf",
                               "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2", "regnet_x_800mf",
                               "regnet_x_1_6gf", "mobilenet_v2", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
                               "googlenet", "squeezenet1_0", "squeezenet1_1", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                               "shufflenet_v2_x2_0")
        for s in ("uniform8", "uniform4")]
# inception_v3 needs 75 px; vgg/alexnet at 224 (adaptive pool = identity) and off it (a real adaptive pool)
SLOW += [("inception_v3", s, 80) for s in ("uniform8", "uniform4")]
SLOW += [(n, "uniform8", 224) for n in ("vgg11_bn", "alexnet")]
SLOW += [(n, "uniform8", 64) for n in ("vgg11_bn", "alexnet")]
SLOW += [("densenet121", s, 32) for s in ("uniform8", "uniform4")]
SLOW += [(n, s, SIDE) for n in ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1",
                                "efficientnet_b2", "efficientnet_b3", "efficientnet_v2_s", "regnet_y_400mf",
                                "regnet_y_800mf") for s in ("uniform8", "uniform4")]
SLOW += [("timm:tf_mobilenetv3_small_minimal_100", "uniform8", 64), ("timm:tf_efficientnet_lite0", "uniform8", 64)]


def _calibrated(arch: str, scheme: str, side: int = SIDE):
    torch.manual_seed(0)
    fp = fp_model(arch, 10)
    randomize_bn(fp)
    model = quant_model(arch, load_scheme(arch, scheme), 10, fp=fp, input_size=side)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, side, side))
    return model.eval()


def _three_way(name: str, scheme: str, tvm: bool, side: int = SIDE, ort: bool = False) -> None:
    """QAT eval == reference (== TVM llvm, == ONNX Runtime) on a calibrated random-weight model."""
    arch = name if ":" in name else f"torchvision:{name}"
    model = _calibrated(arch, scheme, side)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1)) * 1.5
    graph = export_integer(model, (3, side, side))["graph"]
    qat = model.forward_int(x).numpy()
    ref = run_graph(graph, x.numpy())
    assert np.abs(ref).max() > 0
    assert (qat != ref).sum() == 0, f"{arch} {scheme}: QAT eval vs reference"
    if tvm:
        assert (tvm_outputs(graph, x.numpy()) != ref).sum() == 0, f"{arch} {scheme}: TVM vs reference"
    if ort:
            assert (OnnxProgram(to_onnx(graph, (3, side, side)))(x.numpy()) != ref).sum() == 0, f"{arch}: ORT vs reference"


@pytest.mark.parametrize("name, scheme", FAST)
def test_torchvision_bit_exact(name, scheme):
    pytest.importorskip("tvm")
    _three_way(name, scheme, tvm=name == "resnet18")     # TVM on the rest: test-slow


class _Gated(nn.Module):
    """Every table function and a squeeze-excitation gate: hardswish, SE (keepdim mean -> conv -> ReLU
    -> conv -> hardsigmoid, times the map), SiLU, sigmoid, tanh, and GELU on the pooled features."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = nn.functional.hardswish(self.b1(self.c1(x)))
        s = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = nn.functional.silu(self.c2(x * s))
        x = torch.tanh(self.c3(x)) + torch.sigmoid(x)
        return self.fc(nn.functional.gelu(x.mean((2, 3))))


@pytest.mark.parametrize("numerics", ["exact", "hawq"])
def test_tables_and_squeeze_excitation_are_exact_everywhere(numerics):
    """Tables (all six functions), squeeze-excitation's product and a conv on the pooled map: QAT eval
    == reference == TVM == ONNX Runtime, and the quantized model computes the float one's function."""
    from hawq.quant.config import QuantConfig
    torch.manual_seed(0)
    model = _Gated().eval()
    randomize_bn(model)
    images = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    q = hawq.quantize(model, images[0], images, config=QuantConfig(numerics=numerics))
    graph = hawq.export_program(q, input_shape=(3, 12, 12))
    assert sorted(n.function for n in graph.nodes if n.OP == "lut") == sorted(
        ["hardswish", "hardsigmoid", "silu", "tanh", "sigmoid", "gelu"])
    assert [n.OP for n in graph.nodes].count("mul") == 1
    _exact_in_every_backend(q, model, graph, torch.randn(4, 3, 12, 12), numerics, tol=0.08)


@pytest.mark.slow
@pytest.mark.parametrize("name, scheme", [("mobilenet_v3_small", "uniform4"), ("efficientnet_b0", "uniform8"),
                                          ("regnet_y_400mf", "uniform4")])
def test_torchvision_tables_and_squeeze_excitation(name, scheme):
    """MobileNetV3, EfficientNet (stochastic depth: identity in eval), RegNetY: QAT eval == reference
    == TVM == ONNX Runtime."""
    _three_way(name, scheme, tvm=True, ort=True)


@pytest.mark.parametrize("scheme", [pytest.param("uniform8", marks=pytest.mark.slow), "uniform4"])
def test_shufflenet_channel_shuffle_and_chunk_are_exact_everywhere(scheme):
    """ShuffleNetV2: ``chunk`` -> ``slice_channels``, view/transpose/view -> ``channel_shuffle`` (index
    moves; per-channel grids move with their channels): QAT eval == reference == TVM == ONNX Runtime."""
    model = _calibrated("torchvision:shufflenet_v2_x0_5", scheme)
    x = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1)) * 1.5
    graph = export_integer(model, (3, SIDE, SIDE))["graph"]
    ops = [n["op"] for n in graph["nodes"]]
    assert ops.count("channel_shuffle") == 16 and ops.count("slice_channels") == 2 * 13   # 16 units, 13 of stride 1
    ref = run_graph(graph, x.numpy())
    assert (model.forward_int(x).numpy() == ref).all()
    assert (tvm_outputs(graph, x.numpy()) == ref).all()
    assert (OnnxProgram(to_onnx(graph, (3, SIDE, SIDE)))(x.numpy()) == ref).all()


@pytest.mark.parametrize("name", [pytest.param("resnet18", marks=pytest.mark.slow), "mobilenetv2_100", "regnetx_002",
                                  "tf_efficientnet_lite0"])
def test_timm_bit_exact(name):
    """timm models (their BatchNormAct2d folded with its ReLU/ReLU6; tf_efficientnet_lite0's
    ``Conv2dSame``, asymmetric TF "SAME" padding at stride 2): QAT eval == reference (== TVM)."""
    pytest.importorskip("timm")
    pytest.importorskip("tvm")
    _three_way(f"timm:{name}", "uniform4", tvm=name == "mobilenetv2_100")


@pytest.mark.slow
@pytest.mark.parametrize("name, scheme, side", SLOW)
def test_torchvision_bit_exact_full(name, scheme, side):
    pytest.importorskip("tvm")
    _three_way(name, scheme, tvm=True, side=side)


def test_flatten_of_a_feature_map_and_ceil_mode_pools_are_exact():
    """A VGG-style classifier over a 4x4 map, a ceil-mode pool, a conv without BN, and a hidden
    linear layer followed by another quantizer: QAT eval == reference == TVM (NHWC and NCHW)."""
    pytest.importorskip("tvm")
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2, ceil_mode=True), torch.nn.AdaptiveAvgPool2d((4, 4)), torch.nn.Flatten(),
        torch.nn.Linear(128, 32), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(32, 10))
    x = torch.randn(2, 3, 15, 15)                      # 15 -> 7 -> ceil: 4
    q = capture(m, x)
    with torch.no_grad():
        q(torch.randn(4, 3, 15, 15))
    q.eval()
    graph = export_integer(q, (3, 15, 15))["graph"]
    assert [n["op"] for n in graph["nodes"]].count("flatten") == 1
    assert any(n["op"] == "maxpool2d" and n.get("ceil_mode") for n in graph["nodes"])
    ref = run_graph(graph, x.numpy())
    assert (q.forward_int(x).numpy() == ref).all()
    for fast in (True, False):
        assert (tvm_outputs(graph, x.numpy(), fast=fast) == ref).all()


def test_layer_names_are_the_models_own_and_schemes_match_hawqs_figures():
    arch = "torchvision:resnet18"
    bits = load_scheme(arch, "uniform4")
    assert list(bits)[:6] == ["quant_input", "conv1", "layer1.0.conv1_act", "layer1.0.conv1",
                              "layer1.0.conv2_act", "layer1.0.conv2"]
    assert bits["layer1.0.add"] == 16 and bits["fc"] == 8 and bits["fc_act"] == 8 and bits["conv1"] == 8
    rows = {r["scheme"]: r for r in table_rows(arch)}
    # HAWQ-V3's published resnet18 figures: uniform8 11.1 MB / 116 GBOPS, uniform4 5.8 MB / 34 GBOPS
    assert rows["uniform8"]["size_mb"] == pytest.approx(11.1, abs=0.1) and rows["uniform8"]["gbops"] == pytest.approx(116, abs=1)
    assert rows["uniform4"]["size_mb"] == pytest.approx(5.8, abs=0.1) and rows["uniform4"]["gbops"] == pytest.approx(34.7, abs=0.1)


def test_capture_trains_the_users_parameters_only_when_asked():
    model = torchvision.models.resnet18(num_classes=10)
    q = capture(model, torch.zeros(1, 3, SIDE, SIDE))
    assert q.conv1.conv.weight is not model.conv1.weight
    q2 = capture(model, torch.zeros(1, 3, SIDE, SIDE), copy_model=False)
    assert q2.conv1.conv.weight is model.conv1.weight and q2.conv1.bn is model.bn1
    assert "layer1.0.add" in dict(q.named_modules()) and "def forward" in q.program.code


# --------------------------------------------------------------------------- the Python API
API_EXAMPLE = """
import torch, torchvision, hawq
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
images = [torch.randn(8, 3, 32, 32) for _ in range(4)]
qmodel = hawq.quantize(model, images[0], images, w_bits=4, a_bits=8)      # PTQ, eval mode
graph = hawq.export_program(qmodel, example_inputs=images[0])               # the integer program
logits = hawq.run_reference(graph, images[0])                               # int64 [8, 10]
assert (logits == qmodel.forward_int(images[0]).numpy()).all()
qat = hawq.prepare_qat(model, images[0], scheme="uniform4")                 # train like any module
opt = torch.optim.SGD(qat.parameters(), lr=0.01)
torch.nn.functional.cross_entropy(qat(images[1]), torch.zeros(8, dtype=torch.long)).backward()
opt.step()
qat.eval()
assert (hawq.run_reference(hawq.export_program(qat, input_shape=(3, 32, 32)), images[2])
        == qat.forward_int(images[2]).numpy()).all()
"""


def test_python_api_example_runs():
    exec(compile(API_EXAMPLE, "README example", "exec"), {})


def test_readme_shows_the_api_example():
    readme = Path(ROOT, "README.md").read_text()
    assert API_EXAMPLE.strip() in readme


def test_api_adaround_on_a_captured_model_is_exact(user_file):
    from hawq.models import zoo
    torch.manual_seed(0)
    model = zoo.build(f"{user_file}:build")
    images = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    q = hawq.quantize(model, images[0], images, w_bits=4, recon="adaround", recon_iters=2)
    assert q.bit_config()["stem.0"] == 8 and q.bit_config()["body.0"] == 4      # the first conv stays at 8
    graph = hawq.export_program(q, input_shape=(3, 32, 32))
    assert (hawq.run_reference(graph, images[1]) == q.forward_int(images[1]).numpy()).all()
    with pytest.raises(HawqError, match="choose one of none, adaround, brecq, qdrop"):
        hawq.quantize(model, images[0], images, recon="gptq")


@pytest.mark.parametrize("method", ["brecq", "qdrop"])
def test_block_reconstruction_finds_residual_units_in_the_graph(method):
    """BRECQ/QDrop on a captured torchvision resnet18: one unit per BasicBlock (found from the graph,
    named by the model's paths), the stem and the classifier alone; the result stays bit-exact."""
    from hawq.ptq.recon import units
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    images = [torch.randn(8, 3, SIDE, SIDE) for _ in range(2)]
    q = hawq.quantize(model, images[0], images, w_bits=4, recon=method, recon_iters=2)
    names = [n for n, _ in units(q, blockwise=True)]
    assert names == ["conv1"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["fc"]
    block = dict(units(q, blockwise=True))["layer2.0"]
    assert {n for n, m in q.named_modules() if m in set(block.modules())} >= {
        "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.0.add"}
    assert len(q.state_dict()) == len(copy.deepcopy(q).state_dict())     # units are not registered
    graph = hawq.export_program(q, input_shape=(3, SIDE, SIDE))
    x = torch.randn(2, 3, SIDE, SIDE)
    assert (hawq.run_reference(graph, x) == q.forward_int(x).numpy()).all()


# --------------------------------------------------------------------------- a user's file, CLIs
USER_FILE = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = nn.functional.relu(self.body(x) + x)
        return self.head(self.pool(x).flatten(1))

def build(num_classes=10):
    return Net(num_classes)

def not_a_model():
    return 3

class Two(nn.Module):
    def forward(self, x, y):
        return x + y

def two():
    return Two()

class Norm(Net):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.LayerNorm([16, 32, 32]))

def layernorm():
    return Norm()

class Fixed(nn.Module):          # a flatten of the feature map: one input size only
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8 * 16 * 16, num_classes)

    def forward(self, x):
        return self.head(nn.functional.relu(self.conv(x)).flatten(1))

def fixed(num_classes=10):
    return Fixed(num_classes)
"""


#: A new user's command line: a bare environment, nothing but the repository on PYTHONPATH.
_cli = functools.partial(cli, timeout=900,
                         env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("user") / "mynet.py"
    p.write_text(textwrap.dedent(USER_FILE))
    return p


def test_user_file_trains_verifies_and_compiles(user_file, tmp_path):
    pytest.importorskip("tvm")
    arch = f"{user_file}:build"
    common = ["-a", arch, "--epochs", "1", "--data-percentage", "0.01", "--eval-limit", "64", "-b", "64",
              "--no-progress"]
    r = _cli("quant_train.py", *common, "--quant-scheme", "fp32", "--save-path", str(tmp_path / "fp"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli("quant_train.py", *common, "--quant-scheme", "uniform4", "--fix-BN", "--save-path", str(tmp_path / "q"),
             "--pretrained", str(tmp_path / "fp" / "model_best.pth.tar"))
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = str(tmp_path / "q" / "checkpoint.pth.tar")
    r = _cli("-m", "hawq.verify", "--checkpoint", ckpt, "--limit", "64", "--no-progress")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "mismatches: 0/640", r.stdout + r.stderr
    r = _cli("-m", "tvm_benchmark.verify", "--checkpoint", ckpt, "--limit", "32", "-b", "16", "--no-progress")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "mismatches: 0/320", r.stdout + r.stderr
    r = _cli("bit_config.py", "--table", "-a", arch)
    assert r.returncode == 0 and "uniform4" in r.stdout, r.stdout + r.stderr
    assert "stem.0" in load_scheme(arch, "uniform8") and "body.2" in load_scheme(arch, "uniform8")


def test_input_size_is_recorded_and_reused(user_file, tmp_path):
    """--input-size 48: FP training records it; PTQ, verification and TVM take it from the files."""
    pytest.importorskip("tvm")
    arch = f"{user_file}:build"
    r = _cli("quant_train.py", "-a", arch, "--input-size", "48", "--quant-scheme", "fp32", "--epochs", "1",
             "--data-percentage", "0.01", "--eval-limit", "64", "-b", "64", "--no-progress",
             "--save-path", str(tmp_path / "fp"))
    assert r.returncode == 0, r.stderr[-2000:]
    fp = tmp_path / "fp" / "model_best.pth.tar"
    assert C.read(str(fp)).input_size == 48
    r = _cli("-m", "hawq.ptq", "-a", arch, "--pretrained", str(fp), "--w-bits", "4", "--calib-size", "64",
             "--eval-limit", "64", "--no-progress", "--save-path", str(tmp_path / "ptq"))
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = str(tmp_path / "ptq" / "checkpoint.pth.tar")
    assert C.read(ckpt).input_size == 48
    assert C.read(str(tmp_path / "ptq" / "quantized_checkpoint.pth.tar")).raw["input_shape"] == [3, 48, 48]
    r = _cli("-m", "tvm_benchmark.verify", "--checkpoint", ckpt, "--limit", "16", "-b", "16", "--no-progress")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "mismatches: 0/160", r.stdout + r.stderr
    # a fully convolutional model evaluates at another size when asked; an artifact's size is fixed
    r = _cli("-m", "hawq.verify", "--checkpoint", ckpt, "--input-size", "40", "--limit", "16", "--no-progress")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "mismatches: 0/160", r.stdout + r.stderr
    r = _cli("-m", "tvm_benchmark.export", "--checkpoint", str(tmp_path / "ptq" / "quantized_checkpoint.pth.tar"),
             "--input-size", "40", "--out", str(tmp_path / "so"))
    assert r.returncode == 2 and "was exported for 48px inputs" in r.stderr and not (tmp_path / "so").exists(), r.stderr


@pytest.mark.parametrize("arch_tail, message", [
    (":not_a_model", "returned int, not a torch.nn.Module"),
    (":missing_function", "has no function 'missing_function'"),
    (":two", "forward takes 2 inputs"),
    (":layernorm", "stem.1 (LayerNorm) has no integer-only implementation ("),
    (":fixed --input-size 7", "does not run on a 1x3x7x7 input (RuntimeError: mat1 and mat2 shapes"),
    (":build --input-size 0", "--input-size must be a positive integer, got 0"),
])
def test_bad_user_models_are_one_line_errors(user_file, tmp_path, arch_tail, message):
    tail, *more = arch_tail.split()
    r = _cli("-m", "hawq.verify", "-a", f"{user_file}{tail}", "--quant-scheme", "uniform8", "--random",
             "--limit", "4", *more)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_bad_specs_and_weights_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise ValueError('no GPU here')\n")
    sd = tmp_path / "wrong.pth"
    torch.save({"model": torchvision.models.resnet18(num_classes=7).state_dict()}, sd)
    cases = [
        (["-m", "hawq.verify", "-a", "torchvision:nosuchnet", "--quant-scheme", "uniform8", "--random"],
         "unknown torchvision classification model 'nosuchnet'"),
        (["-m", "hawq.verify", "-a", f"{bad}:build", "--quant-scheme", "uniform8", "--random"],
         "raised on import: ValueError: no GPU here"),
        (["-m", "hawq.verify", "-a", "torchvision:vit_b_16", "--quant-scheme", "uniform8", "--random"],
         "encoder.layers.encoder_layer_0.ln_1 (LayerNorm) has no integer-only implementation"),
        (["quant_train.py", "-a", "torchvision:resnet18", "--pretrained", str(sd), "--epochs", "1",
          "--save-path", str(tmp_path / "run")], "'fc.weight' has shape (7, 512), model expects (10, 512)"),
    ]
    for args, message in cases:
        r = _cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and message in lines[0], (args, r.stderr[-2000:])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1"])
def test_torchvision_tensorcore_program_emulated(name, monkeypatch):
    """--target cuda (sm_90 tensor-core schedule, each PTX instruction emulated on llvm) on captured
    graphs: a residual net, and a ceil-mode pool + concat one."""
    pytest.importorskip("tvm")
    from tvm_benchmark.targets import cuda_available
    if cuda_available():
        pytest.skip("a visible GPU overrides HAWQ_CUDA_ARCH")
    monkeypatch.setenv("HAWQ_CUDA_ARCH", "sm_90")
    model = _calibrated(f"torchvision:{name}", "uniform8")
    x = (torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1)) * 1.5).numpy()
    graph = export_integer(model, (3, SIDE, SIDE))["graph"]
    assert (tvm_outputs(graph, x, "cuda", threads=None, emulate=True) == run_graph(graph, x)).all()


def test_capture_report_status_lines():
    from hawq.apps.capture_report import status
    assert status("resnet18", 224) == "captured: 47 quantized layers"
    assert status("vit_b_16", 224) == ("encoder.layers.encoder_layer_0.ln_1 (LayerNorm) has no integer-only "
                                       "implementation")


# --------------------------------------------------------------------------- explicit padding
class _Padded(nn.Module):
    """ZeroPad2d before a conv, Conv2d(padding="same"), F.pad before a strided conv."""

    def __init__(self, pad=(1, 1, 1, 1)):
        super().__init__()
        self.pad_last = pad
        self.pad = nn.ZeroPad2d(1)
        self.c1, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding="same")
        self.c3 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = nn.functional.relu(self.bn(self.c1(self.pad(x))))
        x = nn.functional.relu(self.c2(x))
        x = nn.functional.relu(self.c3(nn.functional.pad(x, self.pad_last)))
        return self.fc(x.mean((2, 3)))


def test_explicit_padding_folds_into_the_next_conv():
    torch.manual_seed(0)
    model = _Padded().eval()
    randomize_bn(model)
    images = [torch.randn(8, 3, SIDE, SIDE) for _ in range(2)]
    q = hawq.quantize(model, images[0], images)
    graph = hawq.export_program(q, input_shape=(3, SIDE, SIDE))
    x = torch.randn(4, 3, SIDE, SIDE)
    assert (hawq.run_reference(graph, x) == q.forward_int(x).numpy()).all()
    with torch.no_grad():
        err = (q(x) - model(x)).abs().max() / model(x).abs().max()
    assert err < 0.02, err                      # W8A8 of the same function: padding not lost or doubled
    assert (model.c1.padding, model.c2.padding, model.c3.padding) == ((0, 0), "same", (0, 0))   # FP model untouched


class _SamePadded(nn.Module):
    """Asymmetric zero padding three ways: F.pad (0, 1, 0, 1) before a strided conv, an even kernel
    with padding="same" (PyTorch puts the odd pixel after), timm-style TF "SAME" (``Conv2dSame``)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2)
        self.c2, self.bn = nn.Conv2d(8, 8, 2, padding="same"), nn.BatchNorm2d(8)
        self.c3 = _Conv2dSame(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = nn.functional.relu(self.c1(nn.functional.pad(x, (0, 1, 0, 1))))
        x = nn.functional.relu(self.bn(self.c2(x)))
        return self.fc(nn.functional.relu(self.c3(x)).mean((2, 3)))


class _Conv2dSame(nn.Conv2d):
    """timm's ``Conv2dSame`` (same name, same forward): TF "SAME" padding computed from the input size."""

    def forward(self, x):
        from hawq.capture import same_padding
        (t, b), (l, r) = (same_padding(int(n), k, s) for n, k, s in zip(x.shape[2:], self.kernel_size, self.stride))
        return nn.functional.conv2d(nn.functional.pad(x, (l, r, t, b)), self.weight, self.bias, self.stride, 0)


_Conv2dSame.__name__ = "Conv2dSame"


def test_asymmetric_padding_is_exact_in_every_backend():
    """Asymmetric "same" padding (TF-ported models): QAT eval == reference == TVM == ONNX Runtime, and
    the quantized model computes the float model's function (the padding is neither lost nor shifted)."""
    torch.manual_seed(0)
    model = _SamePadded().eval()
    randomize_bn(model)
    images = [torch.randn(8, 3, 17, 17) for _ in range(2)]
    q = hawq.quantize(model, images[0], images)
    graph = hawq.export_program(q, input_shape=(3, 17, 17))
    pads = [n.padding for n in graph.nodes if n.OP == "conv2d"]
    assert pads == [[0, 0, 1, 1]] * 3, pads        # (top, left, bottom, right): the odd pixel after, every time
    _exact_in_every_backend(q, model, graph, torch.randn(4, 3, 17, 17), tol=0.03)


def _exact_in_every_backend(q, model, graph, x: torch.Tensor, numerics: str = "exact", tol: float = 0.05) -> None:
    """QAT eval == reference == TVM == ONNX Runtime on ``x``, and the quantized model computes the
    float model's function within ``tol`` (relative to the largest logit)."""
    ref = hawq.run_reference(graph, x)
    assert (ref == q.forward_int(x).numpy()).all()
    assert (tvm_outputs(graph.to_dict(), x.numpy()) == ref).all()
    assert (OnnxProgram(to_onnx(graph, tuple(x.shape[1:]), numerics=numerics))(x.numpy()) == ref).all()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # PyTorch's note on even-kernel "same"
        err = (q(x) - model(x)).abs().max() / model(x).abs().max()
    assert err < tol, err


# --------------------------------------------------------------------------- DenseNet-style BN, pooled convs
class _DenseLike(nn.Module):
    """A BatchNorm on a concat (some γ < 0) before a ReLU and a conv, a 2×2 pool of a conv's
    accumulator, and a 1×1 conv on a kept-dim global mean (MobileNetV3's head)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 8, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)
        self.head = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x1 = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.norm(torch.cat([x1, self.c2(x1)], 1)))
        x = self.pool(self.c3(x))
        x = torch.relu(self.head(torch.relu(x).mean((2, 3), keepdim=True)))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("numerics", ["exact", "hawq"])
def test_standalone_batchnorm_and_pooled_convs_are_exact_everywhere(numerics):
    from hawq.quant.config import QuantConfig
    torch.manual_seed(0)
    model = _DenseLike().eval()
    randomize_bn(model)
    with torch.no_grad():
        model.norm.weight[::3] *= -1                 # negative γ: sign -1 channels
    images = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    q = hawq.quantize(model, images[0], images, config=QuantConfig(numerics=numerics))
    graph = hawq.export_program(q, input_shape=(3, 16, 16))
    ops = [n.OP for n in graph.nodes]
    assert ops.count("channel_affine") == 1 and ops.count("avgpool2d") == 2 and "global_avgpool_sum" not in ops
    affine = next(n for n in graph.nodes if n.OP == "channel_affine")
    assert sorted(set(affine.sign.tolist())) == [-1, 1]
    _exact_in_every_backend(q, model, graph, torch.randn(4, 3, 16, 16), numerics)


@pytest.mark.parametrize("name, side", [("torchvision:densenet121", 32), ("timm:tf_mobilenetv3_small_minimal_100", 64)])
def test_densenet_and_mobilenetv3_minimal_are_exact(name, side):
    """DenseNet (standalone BN on concats, pooled accumulators) and MobileNetV3-minimal (a conv on the
    pooled map): QAT eval == reference == ONNX Runtime (TVM: test-slow)."""
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    model = _calibrated(name, "uniform4", side)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1)) * 1.5
    graph = export_integer(model, (3, side, side))["graph"]
    ref = run_graph(graph, x.numpy())
    assert (model.forward_int(x).numpy() == ref).all()
    assert (OnnxProgram(to_onnx(graph, (3, side, side)))(x.numpy()) == ref).all()


class _Adaptive(nn.Module):
    """Adaptive average pools to sizes that are not divisors: 7x11 -> 3x4 (windows of 3 rows, of 3 or
    4 columns: L = 36), and 3x4 -> 4x4 (overlapping windows of 1 or 2 rows: L = 2), then a classifier."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3)
        self.pool = nn.AdaptiveAvgPool2d((3, 4))
        self.c2 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6 * 16, 10)

    def forward(self, x):
        x = self.c2(torch.relu(self.pool(torch.relu(self.c1(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


@pytest.mark.parametrize("numerics", ["exact", "hawq"])
def test_adaptive_average_pool_to_any_size_is_exact_everywhere(numerics):
    from hawq.quant.config import QuantConfig
    torch.manual_seed(0)
    model = _Adaptive().eval()
    images = [torch.randn(8, 3, 9, 13) for _ in range(2)]
    q = hawq.quantize(model, images[0], images, config=QuantConfig(numerics=numerics))
    graph = hawq.export_program(q, input_shape=(3, 9, 13))
    pools = [n for n in graph.nodes if n.OP == "adaptive_avgpool2d"]
    assert [(p.output_size, p.scale_up) for p in pools] == [([3, 4], 36), ([4, 4], 2)]
    _exact_in_every_backend(q, model, graph, torch.randn(4, 3, 9, 13), numerics)


@pytest.mark.slow
@pytest.mark.parametrize("name, side", [("mobilenet_v3_small", 32), ("efficientnet_b0", 32), ("densenet121", 32),
                                        ("alexnet", 64), ("regnet_y_400mf", 32), ("shufflenet_v2_x0_5", 32)])
def test_new_families_compile_for_cuda_emulated(name, side):
    """The CUDA build (tensor-core schedules, run emulated on the CPU) of the families that need the new
    ops is bit-exact too."""
    model = _calibrated(f"torchvision:{name}", "uniform8", side)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    graph = export_integer(model, (3, side, side))["graph"]
    assert (tvm_outputs(graph, x.numpy(), "cuda", emulate=True) == run_graph(graph, x.numpy())).all()


# --------------------------------------------------------------------------- pools, points, names
class _PaddedPools(nn.Module):
    """Inception's average-pool branch twice: on a 4x4 map and on a 1x1 map (where a padded 3x3
    window that counts its padding divides by 9), then pytorchcv's ``x.view(x.size(0), -1)`` head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool4 = nn.AvgPool2d(3, 1, 1)
        self.down = nn.Sequential(nn.Conv2d(8, 8, 3, 4, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool1 = nn.AvgPool2d(3, 1, 1)
        self.mix = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.final_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.final_pool(self.mix(self.pool1(self.down(self.pool4(self.stem(x))))))
        return self.fc(x.view(x.size(0), -1))


def test_padded_average_pools_are_kept_and_the_quantized_model_tracks_the_float_one():
    """A stride-1 padded 3x3 average pool keeps the map's size but is not the identity (it was dropped
    once), and on a 1x1 map it is not the whole-map mean either (x/9, not x): the quantized model
    must compute the float model's function, to 8-bit precision."""
    from hawq.quant.modules import QuantAveragePool2d, QuantFlatten, QuantWindowAvgPool2d
    torch.manual_seed(0)
    model = _PaddedPools().eval()
    randomize_bn(model)
    x = torch.randn(16, 3, 8, 8)
    q = capture(model, x[:1])
    with torch.no_grad():
        q.train()
        q(x)
        q.eval()
        want, got = model(x), q(x)
    assert isinstance(q.pool4, QuantWindowAvgPool2d) and isinstance(q.pool1, QuantWindowAvgPool2d)
    assert tuple(q.pool1.kernel) == (3, 3) and tuple(q.pool1.padding) == (1, 1)     # the model's window, not the 1x1 map
    # x.size(0) reads no values: the pool before the view is the classifier's global pool, no flatten
    assert isinstance(q.final_pool, QuantAveragePool2d) and not any(isinstance(m, QuantFlatten) for m in q.modules())
    assert ((got - want).norm() / want.norm()).item() < 0.05
    assert (hawq.run_reference(hawq.export_program(q, input_shape=(3, 8, 8)), x) == q.forward_int(x).numpy()).all()


class _Pointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.q = hawq.QuantPoint("accumulator", relu_after=True)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), hawq.QuantPoint("signed"), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.relu(self.q(self.bn(self.conv(x)))))


def test_quant_points_place_named_quantizers_and_layouts_rename_them():
    """A QuantPoint is a quantizer of its role exactly where it stands, named by its path, and readers
    take its grid (no second quantizer); ``names`` renames every module, totally and one to one."""
    from hawq.quant.modules import QuantAct
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    q = capture(_Pointed(), x[:1])
    acts = {n: m.role for n, m in q.named_modules() if isinstance(m, QuantAct)}
    assert acts == {"quant_input": "input", "q": "accumulator", "head.2": "signed"}
    assert q.bit_config()["q"] == 16 and q.q.relu_after
    with torch.no_grad():
        q(x)
    q.eval()
    assert (hawq.run_reference(hawq.export_program(q, input_shape=(3, 8, 8)), x) == q.forward_int(x).numpy()).all()
    names = {"quant_input": "qin", "conv": "c", "q": "acc", "relu": "relu", "head.0": "pool", "head.2": "qh", "head.3": "fc"}
    r = capture(_Pointed(), x[:1], names=names.__getitem__, order=lambda ns: sorted(ns))
    assert r.quant_layer_names() == ["acc", "c", "fc", "qh", "qin"]
    with pytest.raises(HawqError, match="two modules are both named 'x'"):
        capture(_Pointed(), x[:1], names=lambda p: "x")
    with pytest.raises(HawqError, match="unknown role 'wide'"):
        hawq.QuantPoint("wide")
    bad = nn.Sequential(hawq.QuantPoint("relu"), nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(HawqError, match=r"0 \(QuantPoint\) of role 'relu' reads the image"):
        capture(bad, x[:1])
