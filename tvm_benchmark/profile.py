"""``python -m tvm_benchmark.profile``: kept as an entry point; the program is :mod:`tvm_benchmark.apps.profile`."""
from tvm_benchmark.apps.profile import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
