"""x86 instruction-set families: detection from ``/proc/cpuinfo``, the override, and LLVM flags.

LLVM's host name is not enough to pick kernels (it has reported ``rocketlake`` for a Xeon with
AMX), so the features come from the kernel's ``flags`` line. A family is named for the widest exact
integer dot product it brings:

======== ============================================ ==================================================
family   needs (``/proc/cpuinfo`` flags)              dot-product kernels (``tvm_benchmark.intrinsics``)
======== ============================================ ==================================================
avx2     avx2                                         vpmaddwd / vpmaddubsw, 256-bit
avx512   + avx512bw                                   vpmaddwd / vpmaddubsw, 512-bit
avxvnni  + avx_vnni (no AVX-512 VNNI)                 vpdpbusd, 256-bit (VEX), and the avx2 kernels
vnni     + avx512bw, avx512_vnni                      vpdpbusd, 512-bit, and the avx512 kernels
amx      + amx_int8, amx_tile, avx512_vnni            tdpbusd tiles, and the vnni kernels
======== ============================================ ==================================================

GFNI is off in every family below ``amx`` (no family needs it; with ``-mcpu`` of a host that has it,
LLVM builds byte shifts of the lookup popcount from ``vgf2p8affineqb``, which Haswell, Zen 2/3,
Skylake-X and Cascade Lake lack). The vector popcount ``vpopcntq`` (AVX512-VPOPCNTDQ) of the binary
kernels is switched on for a 512-bit family built on a host that has it (``avx512`` excepted:
Skylake-X lacks it), and comes with the reference CPU of a ``vnni`` or ``amx`` cross-build.

``--isa NAME`` overrides the detected family: below the host's it compiles exactly what a machine
with only that family would run (wider features switched off in ``-mattr``); above it the program can
be compiled (``tvm_benchmark.export``) but not run here, and running it is refused with one line.
"""
from __future__ import annotations

from dataclasses import dataclass

from hawq.errors import HawqError
from hawq.tables import cpuinfo_field


__all__ = ["Isa", "ISAS", "VPOPCNT_FLAG", "VPOPCNT_ATTR", "PREFERENCE", "CHOICES", "cpu_flags", "detect", "resolve", "require_runnable",
           "llvm_attrs", "host_mhz", "mac_limit_gmac_s", "describe"]

@dataclass(frozen=True)
class Isa:
    """One ISA family. ``mcpu``: an LLVM CPU that has it (used when compiling for a machine that is
    not this one); ``mattr``: LLVM features switched on; ``off``: features switched off so that a
    host with more does not leak wider instructions into a narrower family's program."""
    name: str
    flags: tuple[str, ...]          # /proc/cpuinfo flags the family needs
    mcpu: str
    mattr: tuple[str, ...]
    off: tuple[str, ...]
    vector_bits: int
    #: Peak exact 8-bit multiply-accumulates per cycle and core: the family's widest exact int8 dot
    #: product at its usual throughput (two vector ports; AMX: one 16x16x64 tdpbusd per 16 cycles).
    macs_per_cycle: int = 0

    def runs_on(self, flags: set[str]) -> bool:
        return all(f in flags for f in self.flags)


ISAS: dict[str, Isa] = {i.name: i for i in (
    Isa("avx2", ("avx2",), "haswell", ("+avx2", "+fma"),
        ("-avx512f", "-avxvnni", "-amx-tile", "-amx-int8", "-gfni"), 256, 32),      # vpmaddwd ymm: 16 x 2
    Isa("avx512", ("avx2", "avx512bw"), "skylake-avx512", ("+avx2", "+avx512f", "+avx512bw", "+avx512vl"),
        ("-avx512vnni", "-avxvnni", "-amx-tile", "-amx-int8", "-gfni", "-avx512vpopcntdq"), 512, 64),  # vpmaddwd zmm
    Isa("avxvnni", ("avx2", "avx_vnni"), "alderlake", ("+avx2", "+avxvnni"),
        ("-avx512f", "-amx-tile", "-amx-int8", "-gfni"), 256, 64),                  # vpdpbusd ymm: 32 x 2
    Isa("vnni", ("avx2", "avx512bw", "avx512_vnni"), "icelake-server",
        ("+avx2", "+avx512f", "+avx512bw", "+avx512vl", "+avx512vnni"), ("-amx-tile", "-amx-int8", "-gfni"), 512,
        128),                                                                          # vpdpbusd zmm: 64 x 2
    Isa("amx", ("avx2", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"), "sapphirerapids",
        ("+avx2", "+avx512f", "+avx512bw", "+avx512vl", "+avx512vnni", "+amx-tile", "+amx-int8"), (), 512,
        1024),                                                                         # 16384 per 16 cycles
)}
#: The vector popcount of the binary convolutions (:mod:`tvm_benchmark.binary`): the ``/proc/cpuinfo``
#: flag and its LLVM feature. Not a family of its own: a 512-bit family's program uses ``vpopcntq``
#: where the host (or the reference CPU of a cross-build) has it, the lookup popcount elsewhere.
VPOPCNT_FLAG = "avx512_vpopcntdq"
VPOPCNT_ATTR = "+avx512vpopcntdq"
#: Families from the most to the least capable: detection takes the first the host runs.
PREFERENCE = ("amx", "vnni", "avx512", "avxvnni", "avx2")
CHOICES = tuple(ISAS)


def cpu_flags() -> set[str]:
    """This CPU's feature flags as Linux reports them (empty when unreadable)."""
    return set((cpuinfo_field("flags") or "").split())


def detect(flags: set[str] | None = None) -> Isa | None:
    """The most capable family ``flags`` (default: this host's) can run; None without AVX2."""
    flags = cpu_flags() if flags is None else flags
    return next((ISAS[n] for n in PREFERENCE if ISAS[n].runs_on(flags)), None)


def resolve(name: str | None, flags: set[str] | None = None) -> Isa | None:
    """The family to compile for: ``name`` (``--isa``) or the detected one."""
    if name is None:
        return detect(flags)
    if name not in ISAS:
        raise HawqError(f"unknown --isa '{name}': choose one of {', '.join(CHOICES)}")
    return ISAS[name]


def require_runnable(isa: Isa | None, flags: set[str] | None = None) -> None:
    """Refuse (one line) to run a program built for a family this CPU lacks (it would die of SIGILL)."""
    flags = cpu_flags() if flags is None else flags
    if isa is not None and not isa.runs_on(flags):
        missing = [f for f in isa.flags if f not in flags]
        have = detect(flags)
        raise HawqError(f"--isa {isa.name} needs CPU flags {', '.join(missing)} that this CPU lacks "
                        f"(it runs {have.name if have else 'no AVX2'}); such a program can be compiled "
                        "with python -m tvm_benchmark.export but not run here")


def llvm_attrs(isa: Isa, host_cpu: str, flags: set[str] | None = None) -> tuple[str, list[str]]:
    """(``mcpu``, ``mattr``) for compiling ``isa``: this host's CPU name when the host runs the
    family (LLVM then tunes for it), else the family's reference CPU; the family's features on,
    wider ones off."""
    flags = cpu_flags() if flags is None else flags
    native = isa.runs_on(flags)
    mcpu = host_cpu if native else isa.mcpu
    extra = ([VPOPCNT_ATTR] if native and isa.vector_bits >= 512 and VPOPCNT_FLAG in flags
             and "-avx512vpopcntdq" not in isa.off else [])
    return mcpu, list(isa.mattr) + extra + list(isa.off)


def host_mhz() -> float | None:
    """This CPU's clock in MHz as ``/proc/cpuinfo`` reports it (the nominal one in most VMs; None
    when unreadable)."""
    try:
        return float(cpuinfo_field("cpu MHz") or "")
    except ValueError:
        return None


def mac_limit_gmac_s(isa: Isa | None, threads: int, mhz: float | None = None) -> float | None:
    """The int8 MAC limit of ``threads`` cores of ``isa`` at ``mhz`` (default: :func:`host_mhz`) in
    GMAC/s: ``macs_per_cycle · threads · GHz``; None without a family or a clock."""
    mhz = host_mhz() if mhz is None else mhz
    if isa is None or not mhz or not isa.macs_per_cycle:
        return None
    return isa.macs_per_cycle * threads * mhz / 1e3


def describe(flags: set[str] | None = None) -> str:
    """``avx2, avx512bw, ...``: the features that matter here, as the CPU reports them."""
    flags = cpu_flags() if flags is None else flags
    wanted = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")
    return ", ".join(f for f in wanted if f in flags) or "none of avx2/avx512/vnni/amx"
