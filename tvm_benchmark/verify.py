"""``python -m tvm_benchmark.verify``: kept as an entry point; the program is :mod:`tvm_benchmark.apps.verify`."""
from tvm_benchmark.apps.verify import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
