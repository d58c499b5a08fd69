"""``python -m tvm_benchmark.layer_latency``: kept as an entry point; the program is :mod:`tvm_benchmark.apps.layer_latency`."""
from tvm_benchmark.apps.layer_latency import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
