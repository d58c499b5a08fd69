"""``python -m tvm_benchmark.export``: kept as an entry point; the program is :mod:`tvm_benchmark.apps.export`."""
from tvm_benchmark.apps.export import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
