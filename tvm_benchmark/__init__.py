"""TVM backend: integer artifact graph -> Relax -> compiled integer-only program (llvm, cuda).

Layout, by role:

- front end: :mod:`.program` (checkpoint/artifact -> integer graph), :mod:`.frontend` (graph ->
  Relax IRModule of integer ops; knows no ISA);
- ISA: :mod:`.isa` (x86 families from /proc/cpuinfo, ``--isa``), :mod:`.intrinsics` (one module of
  tensor intrinsics per family, each registered once by name);
- :mod:`.schedules` (per-layer kernel choice from proven bounds; tensorized conv schedules; the
  generic schedule of everything else);
- build: :mod:`.targets` (LLVM/CUDA targets, per-host tags), :mod:`.compile` (lower, schedule, build);
- runtime: :mod:`.runtime` (VM runner, AMX tile permission), ``export`` / ``run`` / ``verify``;
- benchmarks: :mod:`.baselines`, ``bench``, ``layer_latency``; :mod:`.ir_check` (integer-only IR).
"""
