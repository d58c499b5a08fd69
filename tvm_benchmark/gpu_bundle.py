"""``python -m tvm_benchmark.gpu_bundle``: kept as an entry point; the program is :mod:`tvm_benchmark.apps.gpu_bundle`."""
from tvm_benchmark.apps.gpu_bundle import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
