"""``python -m hawq.ptq_bench``: kept as an entry point; the program is :mod:`hawq.benchmarks.ptq`."""
from hawq.benchmarks.ptq import main

if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
