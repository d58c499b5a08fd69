"""TVM backend: integer artifact graph -> Relax -> compiled integer-only program (llvm, cuda).

Pipeline: :mod:`.program` (checkpoint/artifact -> integer graph) -> :mod:`.relax_graph` (graph ->
Relax IRModule of integer ops) -> :mod:`.compile` (lower, MetaSchedule records, build) -> the
command-line tools ``export``, ``run``, ``verify``, ``tune``, ``bench``, ``layer_latency``.
"""
