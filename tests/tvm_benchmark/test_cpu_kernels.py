"""x86 kernel families: detection and dispatch, every kernel bit-exact at its worst-case bounds
(natively where this CPU has the instruction, as the identical emulated schedule where it does not),
the instruction present in the assembly compiled for a CPU that has it, whole programs per family."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import tvm

from conftest import build_calibrated, tvm_outputs
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.reference import run_graph
from tvm_benchmark import isa as I
from tvm_benchmark import schedules as S
from tvm_benchmark.intrinsics.x86_amx import AmxKernel
from tvm_benchmark.intrinsics.x86_madd import pmaddubsw, pmaddwd
from tvm_benchmark.intrinsics.x86_vnni import vpdpbusd
from tvm_benchmark.compile import lower
from tvm_benchmark.runtime import request_amx
from tvm_benchmark.targets import host_cpu

HOST = I.cpu_flags()
FLAGS = {
    "epyc": {"avx2", "fma"},
    "icelake": {"avx2", "avx512f", "avx512bw", "avx512_vnni"},
    "skylake": {"avx2", "avx512f", "avx512bw"},
    "alderlake": {"avx2", "avx_vnni"},
    "sapphire": {"avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "amx_bf16"},
    "old": {"sse4_2", "avx"},
}
#: Each family's reference CPU for cross-compiling (its instructions must show in the assembly).
REF_CPU = {"avx2": "znver3", "avx512": "skylake-avx512", "avxvnni": "alderlake", "vnni": "icelake-server",
           "amx": "sapphirerapids"}


# --------------------------------------------------------------------------- detection / dispatch
@pytest.mark.parametrize("host,family", [("epyc", "avx2"), ("icelake", "vnni"), ("skylake", "avx512"),
                                         ("alderlake", "avxvnni"), ("sapphire", "amx"), ("old", None)])
def test_detect_picks_the_most_capable_family(host, family):
    got = I.detect(FLAGS[host])
    assert (got.name if got else None) == family


def test_isa_override_and_refusal():
    assert I.resolve("avx2", FLAGS["sapphire"]).name == "avx2"
    with pytest.raises(HawqError, match="unknown --isa 'sse'"):
        I.resolve("sse")
    with pytest.raises(HawqError, match=r"--isa amx needs CPU flags avx512bw, avx512_vnni, amx_int8, amx_tile .*runs avx2"):
        I.require_runnable(I.ISAS["amx"], FLAGS["epyc"])
    I.require_runnable(I.ISAS["avx2"], FLAGS["sapphire"])          # narrower than the host: fine
    # Below the host: this CPU's name for tuning, wider features off; above it: the family's CPU.
    mcpu, mattr = I.llvm_attrs(I.ISAS["avx2"], "sapphirerapids", FLAGS["sapphire"])
    assert mcpu == "sapphirerapids" and "-avx512f" in mattr and "-amx-int8" in mattr
    assert I.llvm_attrs(I.ISAS["amx"], "znver3", FLAGS["epyc"])[0] == "sapphirerapids"


W8 = np.full((32, 64, 3, 3), -128, np.int8)


@pytest.mark.parametrize("family,dtype,lo,hi,w,kernel,shift", [
    ("avx2", "uint8", 0, 255, W8, "pmaddwd_256", 0),                  # 2·255·128 saturates int16
    ("avx2", "uint8", 0, 127, W8, "pmaddubsw_256_g1", 0),             # 2·127·128 = 32512
    ("avx2", "uint8", 0, 15, W8, "pmaddubsw_256_g4", 0),              # 8·15·128 = 15360
    ("avx2", "uint8", 0, 255, np.full((32, 64, 3, 3), 64, np.int8), "pmaddubsw_256_g1", 0),   # 32640
    ("avx2", "uint8", 0, 255, np.full((32, 64, 3, 3), 7, np.int8), "pmaddubsw_256_g4", 0),    # 8·255·7
    ("avx2", "int8", -128, 127, W8, "pmaddwd_256", 0),                # signed: never shifted into ubsw
    ("avx512", "uint8", 0, 255, W8, "pmaddwd_512", 0),
    ("avx512", "uint8", 0, 15, W8, "pmaddubsw_512_g4", 0),
    ("avxvnni", "uint8", 0, 255, W8, "vpdpbusd_256", 0),
    ("vnni", "uint8", 0, 255, W8, "vpdpbusd_512", 0),
    ("vnni", "int8", -128, 127, W8, "vpdpbusd_512", 128),             # q + 128, −128·ΣW in the bias
    ("amx", "uint8", 0, 255, W8, "amx_m14_n2_a2", 0),
    ("amx", "int8", -8, 7, W8, "amx_m14_n2_a2", 128),
    ("amx", "uint8", 0, 255, W8[:, :3], "amx_m14_n2_a2_w4s0", 0),         # 3 input channels: the window form
    ("amx", "uint8", 0, 255, np.full((32, 24, 3, 3), 1, np.int8), "vpdpbusd_512", 0),  # 24: neither form
    ("amx", "uint8", 0, 255, W8[:16], "vpdpbusd_512", 0),              # 16 output channels: no tile pair
    ("avx2", "uint8", 0, 255, W8[:4], None, 0),                        # 4 outputs: no vector step
])
def test_plan_conv_per_family_and_bounds(family, dtype, lo, hi, w, kernel, shift):
    plan = S.plan_conv(I.ISAS[family], dtype, lo, hi, w, 1, out_w=28)
    assert (plan.kernel.name if plan else None) == kernel
    if plan:
        assert plan.act_shift == shift
        a = max(abs(lo + plan.act_shift), abs(hi + plan.act_shift)) if plan.kernel.act_dtype == "uint8" else 255
        assert plan.kernel.exact_for(a, int(np.abs(w.astype(int)).max()))


@pytest.mark.parametrize("out_w,kernel", [(1, "vpdpbusd_512"), (17, "vpdpbusd_512"), (2, "amx_m2_n2"),
                                          (7, "amx_m7_n2"), (14, "amx_m14_n2"), (32, "amx_m16_n2_a2"),
                                          (56, "amx_m14_n2_a2")])
def test_amx_needs_two_rows_per_tile(out_w, kernel):
    # A one-row tile (width 1, or a prime above 16) goes to the vector kernel: TensorIR drops its
    # unit row loop and the AMX intrinsics would not match (seen on resnet18's 1x1 feature maps).
    assert S.plan_conv(I.ISAS["amx"], "uint8", 0, 255, W8, 1, out_w=out_w).kernel.name == kernel


def test_no_kernel_when_the_raw_sum_could_overflow_int32():
    wide = np.full((32, 8192, 3, 3), -128, np.int8)                    # 255·128·73728 > 2^31
    assert S.plan_conv(I.ISAS["vnni"], "uint8", 0, 255, wide, 1, out_w=7) is None


# --------------------------------------------------------------------------- kernels
def _ref_conv(d: np.ndarray, w: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    b, h, wd, _ = d.shape
    o, c, kh, kw = w.shape
    oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
    out = np.zeros((b, oh, ow, o), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = d[:, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1], :c]
            out += np.einsum("nyxc,oc->nyxo", patch.astype(np.int64), w[:, :, i, j].astype(np.int64))
    return out


def _groups(d: np.ndarray, s: int) -> np.ndarray:
    """NHWC -> the AMX kernels' [B, H, W/S, S·C] (W zero-filled to a multiple of S)."""
    b, h, wd, c = d.shape
    pad = np.zeros((b, h, -(-wd // s) * s, c), d.dtype)
    pad[:, :, :wd] = d
    return pad.reshape(b, h, -1, s * c)


KERNELS = [pmaddwd(256), pmaddubsw(256, 1), pmaddubsw(256, 4), pmaddwd(512), pmaddubsw(512, 4),
           vpdpbusd(256), vpdpbusd(512), AmxKernel(7), AmxKernel(14), AmxKernel(8, atiles=2)]


def _worst_case(kernel, rng, c: int, o: int, kh: int, kw: int, h: int, w_: int, b: int):
    """Activations at the kernel's largest exact |a| (half the pixels exactly there), weights at
    ±max (the first output channel all −128, the second all +127), every channel used."""
    terms = getattr(kernel, "int16_terms", 0)          # AMX and vpdpbusd/vpmaddwd: none, any uint8
    amax = 32767 // (terms * 128) if terms else 255
    wmax = 128
    d = rng.integers(0, amax + 1, (b, h, w_, c))
    d[rng.random(d.shape) < 0.5] = amax
    w = rng.integers(-wmax, wmax, (o, c, kh, kw)).astype(np.int8)
    w[0], w[1] = -128, 127
    return d, w


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("ksize,stride", [((3, 3), (1, 1)), ((1, 1), (2, 2)), ((3, 3), (2, 2))])
def test_kernel_bit_exact_at_worst_case_bounds(kernel, ksize, stride):
    """Runs natively where this CPU has the family; elsewhere the identical schedule with the
    instruction's scalar description (so the loop transformations and packing are still proven),
    and the native build is checked for the instruction in :func:`test_kernel_instruction_in_assembly`."""
    rng = np.random.default_rng(zlib.crc32(f"{kernel.name}{ksize}{stride}".encode()))   # same every run
    family = I.ISAS[kernel.family]
    native = family.runs_on(HOST)
    b, c, o = 2, 64, 32 if not isinstance(kernel, AmxKernel) else 64
    ow = kernel.pixels if isinstance(kernel, AmxKernel) else 8
    h = w_ = (ow - 1) * stride[0] + ksize[0]
    d, w = _worst_case(kernel, rng, c, o, *ksize, h, w_, b)
    plan = S.ConvPlan(kernel, 0, emulate=not native)
    func = plan.prim_func(b, (h, w_), c, o, ksize, stride)
    target = {"kind": "llvm", "mcpu": host_cpu()}
    if native:
        target["mcpu"], target["mattr"] = I.llvm_attrs(family, host_cpu())
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm.target.Target(target))
    data = _groups(d, stride[1]) if plan.pixel_groups else d
    if native and isinstance(kernel, AmxKernel):
        request_amx()
    oh = (h - ksize[0]) // stride[0] + 1
    owo = (w_ - ksize[1]) // stride[1] + 1
    out = tvm.runtime.tensor(np.zeros((b, oh, owo, o), "int32"))
    lib(tvm.runtime.tensor(data.astype(kernel.act_dtype)), tvm.runtime.tensor(plan.pack(w)), out)
    np.testing.assert_array_equal(out.numpy(), _ref_conv(d, w, stride))


@pytest.mark.parametrize("kernel,groups,cg,og", [(vpdpbusd(256), 3, 24, 24), (vpdpbusd(512), 2, 8, 32),
                                                   (pmaddubsw(256, 4), 2, 16, 8), (pmaddwd(512), 4, 4, 16)],
                         ids=lambda v: getattr(v, "name", v))
def test_grouped_kernel_bit_exact_at_worst_case_bounds(kernel, groups, cg, og):
    """A grouped conv on the vector kernels: each lane block broadcasts from its own group's
    channels (regnetx's group width 24 on 8-lane vpdpbusd), worst-case operands, stride 2 and 1."""
    rng = np.random.default_rng(zlib.crc32(f"grouped{kernel.name}{groups}".encode()))
    native = I.ISAS[kernel.family].runs_on(HOST)
    b, h = 2, 9
    d, w = _worst_case(kernel, rng, groups * cg, groups * og, 3, 3, h, h, b)
    w = w[:, :cg].copy()
    w[og:og + 2] = w[:2]               # the extreme channels in the second group too
    ref = np.concatenate([_ref_conv(d[..., i * cg:(i + 1) * cg], w[i * og:(i + 1) * og], (1, 1))
                          for i in range(groups)], axis=-1)
    plan = S.plan_conv(I.ISAS[kernel.family], "uint8", 0, 1, w, groups, out_w=7)
    assert plan is not None and plan.groups == groups and og % plan.kernel.lanes == 0
    plan = S.ConvPlan(kernel, 0, emulate=not native, groups=groups)
    func = plan.prim_func(b, (h, h), groups * cg, groups * og, (3, 3), (1, 1))
    target = {"kind": "llvm", "mcpu": host_cpu()}
    if native:
        target["mcpu"], target["mattr"] = I.llvm_attrs(I.ISAS[kernel.family], host_cpu())
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm.target.Target(target))
    out = tvm.runtime.tensor(np.zeros(ref.shape, "int32"))
    lib(tvm.runtime.tensor(d.astype(kernel.act_dtype)), tvm.runtime.tensor(plan.pack(w)), out)
    np.testing.assert_array_equal(out.numpy(), ref)


@pytest.mark.parametrize("c,ksize,stride", [(3, (7, 7), (2, 2)), (8, (3, 3), (1, 1)), (16, (3, 3), (2, 2))])
def test_amx_window_kernel_bit_exact_at_worst_case_bounds(c, ksize, stride):
    """The AMX window form (few input channels, e.g. the stem): overlapping 64-byte windows of a
    flattened row, weights zero beyond the taps; native on an AMX host, else the emulated schedule.
    Activations at 255, weights at ±128/127 (the int32 sum of 64·255·128 per tap is exact)."""
    rng = np.random.default_rng(c)
    native = I.ISAS["amx"].runs_on(HOST)
    b, o, ow = 2, 64, 16
    h = w_ = (ow - 1) * stride[0] + ksize[0]
    d, w = _worst_case(AmxKernel(16), rng, c, o, *ksize, h, w_, b)
    plan = S.plan_conv(I.ISAS["amx"], "uint8", 0, 255, w, 1, out_w=ow, emulate=not native)
    assert plan.window and plan.kernel.pixel_bytes == max(4, c)
    pb, width = plan.kernel.pixel_bytes, plan.input_width(w_, ksize[1], stride[1])
    flat = np.zeros((b, h, width, pb), np.uint8)
    flat[:, :, :w_, :c] = d
    target = {"kind": "llvm", "mcpu": host_cpu()}
    if native:
        target["mcpu"], target["mattr"] = I.llvm_attrs(I.ISAS["amx"], host_cpu())
        request_amx()
    func = plan.prim_func(b, (h, w_), pb, o, ksize, stride)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm.target.Target(target))
    oh = (h - ksize[0]) // stride[0] + 1
    out = tvm.runtime.tensor(np.zeros((b, oh, ow, o), "int32"))
    lib(tvm.runtime.tensor(flat.reshape(b, h, width * pb)), tvm.runtime.tensor(plan.pack(w)), out)
    np.testing.assert_array_equal(out.numpy(), _ref_conv(d, w, stride))
    if not native:   # the instruction itself, compiled for a CPU that has it
        mcpu, mattr = I.llvm_attrs(I.ISAS["amx"], REF_CPU["amx"], flags=set(I.ISAS["amx"].flags))
        func = S.ConvPlan(plan.kernel).prim_func(b, (h, w_), pb, o, ksize, stride)
        asm = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                          tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mattr": mattr})).mod.inspect_source("asm")
        assert "\ttdpbusd\t" in asm


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_kernel_instruction_in_assembly(kernel):
    """Every family's kernel is built and lowered on every machine: compiled for a CPU that has the
    instruction, the assembly contains it (a lowering that silently fell back would not)."""
    family = I.ISAS[kernel.family]
    mcpu, mattr = I.llvm_attrs(family, REF_CPU[family.name], flags=set(family.flags))
    hw = (kernel.pixels if isinstance(kernel, AmxKernel) else 14) + 2      # whole tiles of output pixels
    func = S.ConvPlan(kernel).prim_func(1, (hw, hw), 64, 64, (3, 3), (1, 1))
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mattr": mattr}))
    asm = lib.mod.inspect_source("asm")
    assert f"\t{kernel.instruction}\t" in asm
    if isinstance(kernel, AmxKernel):
        assert all(f"\t{op}\t" in asm for op in ("sttilecfg", "ldtilecfg", "tileloadd", "tilestored", "tilezero"))
        assert asm.index("\tsttilecfg\t") < asm.index("\tldtilecfg\t")     # the check guards the load
    if kernel.family == "avxvnni":
        assert "{vex}\tvpdpbusd" in asm and "zmm" not in asm
    if kernel.family == "avx2":
        assert "zmm" not in asm


def test_amx_permission_matches_the_cpu():
    if "amx_tile" in HOST:
        request_amx()
    else:
        with pytest.raises(HawqError, match="Linux refused the AMX tile state"):
            request_amx()


# --------------------------------------------------------------------------- whole programs
@pytest.fixture(scope="module")
def resnet18_64():
    """resnet18 at 64x64 (64..512 channels: every stage takes AMX tiles) under bops_0.5 (4 and 8 bit)."""
    model, probe = build_calibrated("resnet18", "bops_0.5", 10, (2, 3, 64, 64))
    return export_integer(model, (3, 64, 64))["graph"], probe.numpy()


@pytest.mark.parametrize("family", list(I.ISAS))
def test_whole_program_bit_exact_per_family(family, resnet18_64):
    """Every family's program (kernel choice, shifts, channel padding, pixel groups, packing)
    == the integer reference; emulated instructions where this CPU lacks the family."""
    from tvm_benchmark.frontend import build_module
    graph, x = resnet18_64
    native = I.ISAS[family].runs_on(HOST)
    mod = build_module(graph, x.shape, planner=lambda *a: S.plan_conv(I.ISAS[family], *a))
    called = {str(gv.name_hint).removeprefix("conv2d_").split("_")[0] for gv in mod.get_global_vars()} - {"main"}
    assert called == {"avx2": {"pmaddwd", "pmaddubsw"}, "avx512": {"pmaddwd", "pmaddubsw"}, "avxvnni": {"vpdpbusd"},
                      "vnni": {"vpdpbusd"}, "amx": {"amx"}}[family]     # amx: the stem in the window form
    if family == "amx":     # the input's quantization stores whole 4-byte pixels, viewed as the stem's bytes
        main = lower(mod)["main"].script()
        assert 'dtype="uint32"' in main and "R.memory.view" in main
    got = tvm_outputs(graph, x, isa=family, emulate=not native)
    np.testing.assert_array_equal(got, run_graph(graph, x))


def test_export_records_isa_and_run_refuses_a_foreign_one(tmp_path, capsys):
    from tvm_benchmark.apps import export as tvm_export
    from tvm_benchmark.apps import run as tvm_run
    ck = "checkpoints/resnet20_cifar10_uniform4.pth.tar"
    foreign = next((n for n in ("amx", "vnni", "avx512") if not I.ISAS[n].runs_on(HOST)), None)
    own = I.detect().name
    assert tvm_export.main(["--checkpoint", ck, "--out", str(tmp_path / "own")]) == 0
    params = json.loads((tmp_path / "own" / "params.json").read_text())
    assert params["isa"] == own and set(params["isa_flags"]) == set(I.ISAS[own].flags)
    assert tvm_run.main(["--lib", str(tmp_path / "own"), "--images", "20"]) == 0
    if foreign is None:
        pytest.skip("this CPU runs every family: no foreign ISA to refuse")
    assert tvm_export.main(["--checkpoint", ck, "--out", str(tmp_path / "x"), "--isa", foreign]) == 0
    assert json.loads((tmp_path / "x" / "params.json").read_text())["isa"] == foreign
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        tvm_run.main(["--lib", str(tmp_path / "x"), "--images", "20"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--isa {foreign} needs CPU flags" in err[0]


def test_tile_config_words():
    """The ldtilecfg operand: palette 1, 64-byte rows; accumulators and A tiles of m rows, B of 16."""
    from tvm_benchmark.intrinsics.x86_amx import tile_config
    cfg = b"".join(w.to_bytes(4, "little", signed=True) for w in tile_config(14, 2, 2))
    assert cfg[0] == 1 and not any(cfg[1:16])
    assert [int.from_bytes(cfg[16 + 2 * t:18 + 2 * t], "little") for t in range(8)] == [64] * 8
    assert list(cfg[48:56]) == [14, 14, 14, 14, 14, 14, 16, 16] and not any(cfg[56:])
    one = b"".join(w.to_bytes(4, "little", signed=True) for w in tile_config(7, 2, 1))
    assert list(one[48:56]) == [7, 7, 0, 0, 7, 16, 16, 0] and one[16 + 2 * 3] == 0     # tile 3 unused


@pytest.mark.skipif(not I.ISAS["amx"].runs_on(HOST), reason="this CPU has no AMX-INT8 (the config check "
                    "only runs natively; its assembly is checked in test_kernel_instruction_in_assembly)")
def test_amx_kernels_with_different_tile_configs_interleave():
    """A task loads the tile configuration only when the thread's differs: two kernels of different
    tile rows, run alternately on the same threads, each stay bit-exact (a stale configuration
    would compute with the other kernel's row count)."""
    request_amx()
    rng = np.random.default_rng(7)
    mcpu, mattr = I.llvm_attrs(I.ISAS["amx"], host_cpu())
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mattr": mattr})
    runs = []
    for kernel in (AmxKernel(14), AmxKernel(8, atiles=2)):
        b, c, o = 2, 64, 64
        h = w_ = kernel.pixels + 2
        d, w = _worst_case(kernel, rng, c, o, 3, 3, h, w_, b)
        plan = S.ConvPlan(kernel, 0)
        func = plan.prim_func(b, (h, w_), c, o, (3, 3), (1, 1))
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
        args = [tvm.runtime.tensor(_groups(d, 1).astype("uint8")), tvm.runtime.tensor(plan.pack(w))]
        runs.append((lib, args, _ref_conv(d, w, (1, 1))))
    for lib, args, ref in runs * 3:
        out = tvm.runtime.tensor(np.zeros(ref.shape, "int32"))
        lib(*args, out)
        np.testing.assert_array_equal(out.numpy(), ref)


def test_flat_amx_conv_bit_exact_and_chosen_for_short_rows():
    """A 1x1 stride-1 conv whose image rows are too short to pair tiles (7 pixels) runs over all
    B·H·W pixels as one row: tiles span image rows and images; worst-case operands, native on an
    AMX host, else the emulated schedule. The front end picks it for resnet50's last stages."""
    native = I.ISAS["amx"].runs_on(HOST)
    rng = np.random.default_rng(11)
    b, hw, c, o = 2, 7, 128, 64
    d, w = _worst_case(AmxKernel(7, atiles=2), rng, c, o, 1, 1, hw, hw, b)
    plan = S.ConvPlan(AmxKernel(7, atiles=2), 0, emulate=not native, flat=True)
    func = plan.prim_func(b, (hw, hw), c, o, (1, 1), (1, 1))
    target = {"kind": "llvm", "mcpu": host_cpu()}
    if native:
        target["mcpu"], target["mattr"] = I.llvm_attrs(I.ISAS["amx"], host_cpu())
        request_amx()
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), tvm.target.Target(target))
    out = tvm.runtime.tensor(np.zeros((b, hw, hw, o), "int32"))
    lib(tvm.runtime.tensor(d.reshape(1, 1, b * hw * hw, c).astype("uint8")), tvm.runtime.tensor(plan.pack(w)), out)
    np.testing.assert_array_equal(out.numpy(), _ref_conv(d, w, (1, 1)))
    with pytest.raises(ValueError):
        plan.prim_func(b, (hw, hw), c, o, (3, 3), (1, 1))
    from tvm_benchmark.apps.layer_latency import calibrated_graph
    from tvm_benchmark.frontend import build_module
    graph, _ = calibrated_graph("resnet50", "uniform8", 1, input_size=224)
    mod = build_module(graph, (1, 3, 224, 224), planner=lambda *a: S.plan_conv(I.ISAS["amx"], *a))
    names = [gv.name_hint for gv in mod.get_global_vars()]
    assert "conv2d_amx_m14_n2_a2_flat__" in names              # stage 3, 14x14: two tiles of 14 (was one)
    assert not any("m7_n2_flat" in n for n in names)          # stage 4 at batch 1: 49 pixels tile no better
