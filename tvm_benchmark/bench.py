"""``python -m tvm_benchmark.bench``: kept as an entry point; the program is :mod:`tvm_benchmark.apps.bench`."""
from tvm_benchmark.apps.bench import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
