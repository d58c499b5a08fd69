"""``python -m tvm_benchmark.run``: kept as an entry point; the program is :mod:`tvm_benchmark.apps.run`."""
from tvm_benchmark.apps.run import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
