"""The TVM backend's programs: export, run, verify, bench, per-layer latency, the GPU bundle."""
