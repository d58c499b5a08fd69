"""Small reporting helpers shared by the benchmarks: markdown tables and the host's CPU name."""
from __future__ import annotations

import os
import platform


__all__ = ["markdown_table", "cpuinfo_field", "cpu_name", "cpu_summary", "busy_warning", "run_context",
           "exact_int8_host", "INT8_HOST_NOTE"]

#: What the ONNX programs say where a QDQ file with int8 weights meets a host without VNNI/AMX.
INT8_HOST_NOTE = ("note: this CPU has no VNNI/AMX: ONNX Runtime's uint8 x int8 kernels saturate pairs of products "
                  "here, so a QDQ file with int8 weights can differ from the reference (docs/numerics.md §17); "
                  "python -m hawq.export_onnx --weights u8 writes one that is exact on this host too")

def markdown_table(rows: list[dict], fields: list[str] | tuple[str, ...], text_fields=("arch", "scheme", "engine")) -> list[str]:
    """GitHub markdown table lines for ``rows`` (dicts) with columns ``fields``; text columns left-aligned."""
    lines = ["| " + " | ".join(fields) + " |",
             "|" + "|".join("---" if f in text_fields else "---:" for f in fields) + "|"]
    lines += ["| " + " | ".join(str(r[f]) for f in fields) + " |" for r in rows]
    return lines


def cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of /proc/cpuinfo (None when absent or unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or platform's guess)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def exact_int8_host() -> bool:
    """True unless this is an x86 CPU without VNNI/AMX, where ONNX Runtime's uint8 × int8 kernels add
    pairs of products in saturating 16-bit arithmetic (``vpmaddubsw``); ARM and VNNI/AMX hosts
    accumulate exactly (docs/numerics.md §17)."""
    flags = set((cpuinfo_field("flags") or "").split())
    if not flags:                        # not an x86 /proc/cpuinfo (ARM: "Features")
        return True
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}) or "avx2" not in flags


def cpu_summary() -> str:
    return f"{cpu_name()}, {os.cpu_count()} logical cores"


def run_context(threads: int) -> tuple[str, str, str]:
    """(busy warning or "", host, ISO date) of a benchmark run starting now; the warning is printed."""
    import datetime
    warn = busy_warning(threads)
    if warn:
        print(warn)
    return warn, cpu_summary(), datetime.date.today().isoformat()


def busy_warning(threads: int) -> str:
    """A warning when other processes already load the CPU cores a benchmark's threads need."""
    if not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load + threads <= cores + 0.5:
        return ""
    return (f"warning: the machine was busy before the run (load average {load:.2f} on {cores} cores); "
            f"with {threads} thread(s) the timings include CPU contention and can be far off -- "
            "rerun on an idle machine (or with fewer --threads)")
